/*
 * ft_x25519.c - X25519 (RFC 7748 §5) in portable C99.
 *
 * A field element mod p = 2^255 - 19 is ten unsigned limbs at bit positions 0, 26, 51, 77, ...,
 * 230 (widths alternating 26, 25: "radix 2^25.5"). Every operation ends in a carry pass that
 * brings each limb back within its width (limb 1 up to 2^16 over), so a product of two elements,
 * summed with the factors 19 (2^255 = 19 mod p) and 2 (two odd positions), stays below 2^61.
 * Subtraction adds 2p first so limbs never go negative. The Montgomery ladder follows RFC 7748
 * §5 step by step with a masked swap; the inversion z^(p-2) is a fixed addition chain. No branch
 * or memory index depends on the scalar or on the point.
 */
#include "ft_crypto.h"

#include <string.h>

typedef uint32_t fe[10];

#define M26 0x3ffffffu
#define M25 0x1ffffffu

/* Width of limb i: 26 for even i, 25 for odd i (loop indices are public). */
#define WIDTH(i) (((i) & 1u) ? 25u : 26u)
#define MASK(i) (((i) & 1u) ? M25 : M26)

/* limb i of 2p */
#define TWO_P(i) ((i) == 0 ? 2u * (M26 - 18u) : 2u * MASK(i))

/* Carry h (each below 2^63) into limbs within their widths; the carry out of the top folds back
 * times 19. */
static void fe_carry(fe out, uint64_t h[10])
{
    uint64_t c;
    unsigned i;
    for (i = 0; i < 10; i++) {
        c = h[i] >> WIDTH(i);
        h[i] &= MASK(i);
        if (i < 9) {
            h[i + 1] += c;
        } else {
            h[0] += 19u * c;
        }
    }
    c = h[0] >> 26;
    h[0] &= M26;
    h[1] += c;
    for (i = 0; i < 10; i++) {
        out[i] = (uint32_t)h[i];
    }
}

static void fe_add(fe out, const fe f, const fe g)
{
    uint64_t h[10];
    unsigned i;
    for (i = 0; i < 10; i++) {
        h[i] = (uint64_t)f[i] + g[i];
    }
    fe_carry(out, h);
}

static void fe_sub(fe out, const fe f, const fe g)
{
    uint64_t h[10];
    unsigned i;
    for (i = 0; i < 10; i++) {
        h[i] = (uint64_t)f[i] + TWO_P(i) - g[i];
    }
    fe_carry(out, h);
}

static void fe_mul(fe out, const fe f, const fe g)
{
    uint64_t h[10] = {0};
    uint32_t g19[10];
    uint64_t p;
    unsigned i, j;
    for (i = 0; i < 10; i++) {
        g19[i] = 19u * g[i];
    }
    for (i = 0; i < 10; i++) {
        for (j = 0; j < 10; j++) {
            p = (uint64_t)f[i] * (i + j >= 10 ? g19[j] : g[j]);
            if (i & j & 1u) { /* two odd positions: 2^(w_i + w_j) = 2 * 2^w_(i+j) */
                p <<= 1;
            }
            h[(i + j) % 10] += p;
        }
    }
    fe_carry(out, h);
}

static void fe_sq(fe out, const fe f)
{
    fe_mul(out, f, f);
}

static void fe_mul121665(fe out, const fe f)
{
    uint64_t h[10];
    unsigned i;
    for (i = 0; i < 10; i++) {
        h[i] = (uint64_t)f[i] * 121665u;
    }
    fe_carry(out, h);
}

/* Masked swap: swap is 0 or 1. */
static void fe_cswap(fe f, fe g, uint32_t swap)
{
    const uint32_t mask = 0u - swap;
    uint32_t t;
    unsigned i;
    for (i = 0; i < 10; i++) {
        t = mask & (f[i] ^ g[i]);
        f[i] ^= t;
        g[i] ^= t;
    }
}

static void fe_frombytes(fe out, const uint8_t s[32])
{
    unsigned i, k, pos = 0;
    uint64_t v;
    for (i = 0; i < 10; i++) {
        v = 0;
        for (k = 0; k < 5 && pos / 8 + k < 32; k++) {
            v |= (uint64_t)s[pos / 8 + k] << (8 * k);
        }
        out[i] = (uint32_t)(v >> (pos % 8)) & MASK(i); /* limb 9 ends at bit 254: bit 255 is dropped */
        pos += WIDTH(i);
    }
}

/* The canonical 32 bytes (value fully reduced below p). */
static void fe_tobytes(uint8_t s[32], const fe f)
{
    uint64_t h[10], acc = 0;
    fe t;
    uint32_t q;
    unsigned i, bits = 0, n = 0;
    for (i = 0; i < 10; i++) {
        h[i] = f[i];
    }
    fe_carry(t, h);
    for (i = 0; i < 10; i++) {
        h[i] = t[i];
    }
    /* h is now carried (value < 2^255 + 2^42 < 2p). q = floor((h + 19) / 2^255) is 1 iff h >= p. */
    q = (uint32_t)((h[0] + 19u) >> 26);
    for (i = 1; i < 10; i++) {
        q = (uint32_t)((h[i] + q) >> WIDTH(i));
    }
    h[0] += 19u * q; /* h + 19q - q * 2^255 = h - q * p */
    for (i = 0; i < 9; i++) {
        h[i + 1] += h[i] >> WIDTH(i);
        h[i] &= MASK(i);
    }
    h[9] &= M25; /* drop q * 2^255 */
    for (i = 0; i < 10; i++) {
        acc |= h[i] << bits;
        bits += WIDTH(i);
        while (bits >= 8) {
            s[n++] = (uint8_t)acc;
            acc >>= 8;
            bits -= 8;
        }
    }
    s[31] = (uint8_t)acc; /* the last 7 bits (255 = 31 * 8 + 7) */
    ft_zeroize(h, sizeof h);
    ft_zeroize(t, sizeof t);
}

/* out = z^(p - 2) = z^(2^255 - 21), by squarings and 11 multiplications. */
static void fe_invert(fe out, const fe z)
{
    fe z2, z9, z11, t0, t1, t2;
    int i;
    fe_sq(z2, z);                      /* 2 */
    fe_sq(t0, z2);
    fe_sq(t0, t0);                     /* 8 */
    fe_mul(z9, t0, z);                 /* 9 */
    fe_mul(z11, z9, z2);               /* 11 */
    fe_sq(t0, z11);                    /* 22 */
    fe_mul(t0, t0, z9);                /* 31 = 2^5 - 1 */
    fe_sq(t1, t0);
    for (i = 1; i < 5; i++) fe_sq(t1, t1);
    fe_mul(t0, t1, t0);                /* 2^10 - 1 */
    fe_sq(t1, t0);
    for (i = 1; i < 10; i++) fe_sq(t1, t1);
    fe_mul(t1, t1, t0);                /* 2^20 - 1 */
    fe_sq(t2, t1);
    for (i = 1; i < 20; i++) fe_sq(t2, t2);
    fe_mul(t1, t2, t1);                /* 2^40 - 1 */
    for (i = 0; i < 10; i++) fe_sq(t1, t1);
    fe_mul(t0, t1, t0);                /* 2^50 - 1 */
    fe_sq(t1, t0);
    for (i = 1; i < 50; i++) fe_sq(t1, t1);
    fe_mul(t1, t1, t0);                /* 2^100 - 1 */
    fe_sq(t2, t1);
    for (i = 1; i < 100; i++) fe_sq(t2, t2);
    fe_mul(t1, t2, t1);                /* 2^200 - 1 */
    for (i = 0; i < 50; i++) fe_sq(t1, t1);
    fe_mul(t0, t1, t0);                /* 2^250 - 1 */
    for (i = 0; i < 5; i++) fe_sq(t0, t0);
    fe_mul(out, t0, z11);              /* 2^255 - 32 + 11 = 2^255 - 21 */
    ft_zeroize(z2, sizeof z2);
    ft_zeroize(z9, sizeof z9);
    ft_zeroize(z11, sizeof z11);
    ft_zeroize(t0, sizeof t0);
    ft_zeroize(t1, sizeof t1);
    ft_zeroize(t2, sizeof t2);
}

int ft_x25519(uint8_t out[FT_X25519_BYTES], const uint8_t scalar[FT_X25519_BYTES], const uint8_t u[FT_X25519_BYTES])
{
    uint8_t k[32];
    fe x1, x2, z2, x3, z3, a, aa, b, bb, e, c, d, da, cb;
    uint32_t swap = 0, bit;
    uint8_t any = 0;
    int t;
    unsigned i;

    memcpy(k, scalar, sizeof k); /* clamp (RFC 7748 §5 decodeScalar25519) */
    k[0] &= 248u;
    k[31] &= 127u;
    k[31] |= 64u;
    fe_frombytes(x1, u);
    memset(x2, 0, sizeof x2);
    x2[0] = 1;
    memset(z2, 0, sizeof z2);
    memcpy(x3, x1, sizeof x3);
    memset(z3, 0, sizeof z3);
    z3[0] = 1;

    for (t = 254; t >= 0; t--) {
        bit = (uint32_t)(k[t / 8] >> (t % 8)) & 1u;
        swap ^= bit;
        fe_cswap(x2, x3, swap);
        fe_cswap(z2, z3, swap);
        swap = bit;
        fe_add(a, x2, z2);
        fe_sq(aa, a);
        fe_sub(b, x2, z2);
        fe_sq(bb, b);
        fe_sub(e, aa, bb);
        fe_add(c, x3, z3);
        fe_sub(d, x3, z3);
        fe_mul(da, d, a);
        fe_mul(cb, c, b);
        fe_add(x3, da, cb);
        fe_sq(x3, x3);
        fe_sub(z3, da, cb);
        fe_sq(z3, z3);
        fe_mul(z3, z3, x1);
        fe_mul(x2, aa, bb);
        fe_mul121665(z2, e);
        fe_add(z2, z2, aa);
        fe_mul(z2, z2, e);
    }
    fe_cswap(x2, x3, swap);
    fe_cswap(z2, z3, swap);
    fe_invert(z2, z2);
    fe_mul(x2, x2, z2);
    fe_tobytes(out, x2);

    for (i = 0; i < 32; i++) {
        any |= out[i];
    }
    ft_zeroize(k, sizeof k);
    ft_zeroize(x1, sizeof x1); ft_zeroize(x2, sizeof x2); ft_zeroize(z2, sizeof z2);
    ft_zeroize(x3, sizeof x3); ft_zeroize(z3, sizeof z3);
    ft_zeroize(a, sizeof a); ft_zeroize(aa, sizeof aa); ft_zeroize(b, sizeof b); ft_zeroize(bb, sizeof bb);
    ft_zeroize(e, sizeof e); ft_zeroize(c, sizeof c); ft_zeroize(d, sizeof d);
    ft_zeroize(da, sizeof da); ft_zeroize(cb, sizeof cb);
    /* the all-zero result of a small-order u is refused (RFC 7748 §6.1); out is all zero then */
    return ft_ct_equal(&any, (const uint8_t *)"\0", 1) ? FT_WIRE_ERR_BAD_PAYLOAD : FT_WIRE_OK;
}

void ft_x25519_public(uint8_t pub[FT_X25519_BYTES], const uint8_t secret[FT_X25519_BYTES])
{
    static const uint8_t base[32] = {9};
    const int st = ft_x25519(pub, secret, base); /* the base point has prime order: never all zero */
    (void)st;
}
