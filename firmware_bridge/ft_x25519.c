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

/* h = f * g. Column k sums f_i * g_j over i + j = k (mod 10): a term that wraps (i + j >= 10)
 * takes 19 g_j (2^255 = 19 mod p); in an even column two odd positions meet and the term takes
 * 2 f_i (w_i + w_j = w_(i+j) + 1). Operands stay below 2^27 and 2^30.3: a column is < 2^61.
 * Unrolled so every product is one 32x32->64 multiply-accumulate (UMLAL on a Cortex-M4). */
static void fe_mul(fe out, const fe f, const fe g)
{
    uint64_t h[10];
    const uint32_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4], f5 = f[5], f6 = f[6], f7 = f[7],
                   f8 = f[8], f9 = f[9];
    const uint32_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4], g5 = g[5], g6 = g[6], g7 = g[7],
                   g8 = g[8], g9 = g[9];
    const uint32_t f2_1 = 2u * f1, f2_3 = 2u * f3, f2_5 = 2u * f5, f2_7 = 2u * f7, f2_9 = 2u * f9;
    const uint32_t g19_1 = 19u * g1, g19_2 = 19u * g2, g19_3 = 19u * g3, g19_4 = 19u * g4,
                   g19_5 = 19u * g5, g19_6 = 19u * g6, g19_7 = 19u * g7, g19_8 = 19u * g8,
                   g19_9 = 19u * g9;
    h[0] = (uint64_t)f0 * g0 + (uint64_t)f2_1 * g19_9 + (uint64_t)f2 * g19_8 + (uint64_t)f2_3 * g19_7 +
           (uint64_t)f4 * g19_6 + (uint64_t)f2_5 * g19_5 + (uint64_t)f6 * g19_4 + (uint64_t)f2_7 * g19_3 +
           (uint64_t)f8 * g19_2 + (uint64_t)f2_9 * g19_1;
    h[1] = (uint64_t)f0 * g1 + (uint64_t)f1 * g0 + (uint64_t)f2 * g19_9 + (uint64_t)f3 * g19_8 +
           (uint64_t)f4 * g19_7 + (uint64_t)f5 * g19_6 + (uint64_t)f6 * g19_5 + (uint64_t)f7 * g19_4 +
           (uint64_t)f8 * g19_3 + (uint64_t)f9 * g19_2;
    h[2] = (uint64_t)f0 * g2 + (uint64_t)f2_1 * g1 + (uint64_t)f2 * g0 + (uint64_t)f2_3 * g19_9 +
           (uint64_t)f4 * g19_8 + (uint64_t)f2_5 * g19_7 + (uint64_t)f6 * g19_6 + (uint64_t)f2_7 * g19_5 +
           (uint64_t)f8 * g19_4 + (uint64_t)f2_9 * g19_3;
    h[3] = (uint64_t)f0 * g3 + (uint64_t)f1 * g2 + (uint64_t)f2 * g1 + (uint64_t)f3 * g0 +
           (uint64_t)f4 * g19_9 + (uint64_t)f5 * g19_8 + (uint64_t)f6 * g19_7 + (uint64_t)f7 * g19_6 +
           (uint64_t)f8 * g19_5 + (uint64_t)f9 * g19_4;
    h[4] = (uint64_t)f0 * g4 + (uint64_t)f2_1 * g3 + (uint64_t)f2 * g2 + (uint64_t)f2_3 * g1 +
           (uint64_t)f4 * g0 + (uint64_t)f2_5 * g19_9 + (uint64_t)f6 * g19_8 + (uint64_t)f2_7 * g19_7 +
           (uint64_t)f8 * g19_6 + (uint64_t)f2_9 * g19_5;
    h[5] = (uint64_t)f0 * g5 + (uint64_t)f1 * g4 + (uint64_t)f2 * g3 + (uint64_t)f3 * g2 + (uint64_t)f4 * g1 +
           (uint64_t)f5 * g0 + (uint64_t)f6 * g19_9 + (uint64_t)f7 * g19_8 + (uint64_t)f8 * g19_7 +
           (uint64_t)f9 * g19_6;
    h[6] = (uint64_t)f0 * g6 + (uint64_t)f2_1 * g5 + (uint64_t)f2 * g4 + (uint64_t)f2_3 * g3 +
           (uint64_t)f4 * g2 + (uint64_t)f2_5 * g1 + (uint64_t)f6 * g0 + (uint64_t)f2_7 * g19_9 +
           (uint64_t)f8 * g19_8 + (uint64_t)f2_9 * g19_7;
    h[7] = (uint64_t)f0 * g7 + (uint64_t)f1 * g6 + (uint64_t)f2 * g5 + (uint64_t)f3 * g4 + (uint64_t)f4 * g3 +
           (uint64_t)f5 * g2 + (uint64_t)f6 * g1 + (uint64_t)f7 * g0 + (uint64_t)f8 * g19_9 +
           (uint64_t)f9 * g19_8;
    h[8] = (uint64_t)f0 * g8 + (uint64_t)f2_1 * g7 + (uint64_t)f2 * g6 + (uint64_t)f2_3 * g5 +
           (uint64_t)f4 * g4 + (uint64_t)f2_5 * g3 + (uint64_t)f6 * g2 + (uint64_t)f2_7 * g1 +
           (uint64_t)f8 * g0 + (uint64_t)f2_9 * g19_9;
    h[9] = (uint64_t)f0 * g9 + (uint64_t)f1 * g8 + (uint64_t)f2 * g7 + (uint64_t)f3 * g6 + (uint64_t)f4 * g5 +
           (uint64_t)f5 * g4 + (uint64_t)f6 * g3 + (uint64_t)f7 * g2 + (uint64_t)f8 * g1 +
           (uint64_t)f9 * g0;
    fe_carry(out, h);
}

/* h = f^2: the 45 cross products once, doubled (2 f_i), with the same 2 and 19 rules. */
static void fe_sq(fe out, const fe f)
{
    uint64_t h[10];
    const uint32_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4], f5 = f[5], f6 = f[6], f7 = f[7],
                   f8 = f[8], f9 = f[9];
    const uint32_t f2x_0 = 2u * f0, f2x_1 = 2u * f1, f2x_2 = 2u * f2, f2x_3 = 2u * f3, f2x_4 = 2u * f4,
                   f2x_5 = 2u * f5, f2x_6 = 2u * f6, f2x_7 = 2u * f7, f2x_8 = 2u * f8;
    const uint32_t f4_1 = 4u * f1, f4_3 = 4u * f3, f4_5 = 4u * f5, f4_7 = 4u * f7;
    const uint32_t f2_1 = 2u * f1, f2_3 = 2u * f3, f2_5 = 2u * f5, f2_7 = 2u * f7, f2_9 = 2u * f9;
    const uint32_t f19_5 = 19u * f5, f19_6 = 19u * f6, f19_7 = 19u * f7, f19_8 = 19u * f8, f19_9 = 19u * f9;
    h[0] = (uint64_t)f0 * f0 + (uint64_t)f4_1 * f19_9 + (uint64_t)f2x_2 * f19_8 + (uint64_t)f4_3 * f19_7 +
           (uint64_t)f2x_4 * f19_6 + (uint64_t)f2_5 * f19_5;
    h[1] = (uint64_t)f2x_0 * f1 + (uint64_t)f2x_2 * f19_9 + (uint64_t)f2x_3 * f19_8 +
           (uint64_t)f2x_4 * f19_7 + (uint64_t)f2x_5 * f19_6;
    h[2] = (uint64_t)f2x_0 * f2 + (uint64_t)f2_1 * f1 + (uint64_t)f4_3 * f19_9 + (uint64_t)f2x_4 * f19_8 +
           (uint64_t)f4_5 * f19_7 + (uint64_t)f6 * f19_6;
    h[3] = (uint64_t)f2x_0 * f3 + (uint64_t)f2x_1 * f2 + (uint64_t)f2x_4 * f19_9 + (uint64_t)f2x_5 * f19_8 +
           (uint64_t)f2x_6 * f19_7;
    h[4] = (uint64_t)f2x_0 * f4 + (uint64_t)f4_1 * f3 + (uint64_t)f2 * f2 + (uint64_t)f4_5 * f19_9 +
           (uint64_t)f2x_6 * f19_8 + (uint64_t)f2_7 * f19_7;
    h[5] = (uint64_t)f2x_0 * f5 + (uint64_t)f2x_1 * f4 + (uint64_t)f2x_2 * f3 + (uint64_t)f2x_6 * f19_9 +
           (uint64_t)f2x_7 * f19_8;
    h[6] = (uint64_t)f2x_0 * f6 + (uint64_t)f4_1 * f5 + (uint64_t)f2x_2 * f4 + (uint64_t)f2_3 * f3 +
           (uint64_t)f4_7 * f19_9 + (uint64_t)f8 * f19_8;
    h[7] = (uint64_t)f2x_0 * f7 + (uint64_t)f2x_1 * f6 + (uint64_t)f2x_2 * f5 + (uint64_t)f2x_3 * f4 +
           (uint64_t)f2x_8 * f19_9;
    h[8] = (uint64_t)f2x_0 * f8 + (uint64_t)f4_1 * f7 + (uint64_t)f2x_2 * f6 + (uint64_t)f4_3 * f5 +
           (uint64_t)f4 * f4 + (uint64_t)f2_9 * f19_9;
    h[9] = (uint64_t)f2x_0 * f9 + (uint64_t)f2x_1 * f8 + (uint64_t)f2x_2 * f7 + (uint64_t)f2x_3 * f6 +
           (uint64_t)f2x_4 * f5;
    fe_carry(out, h);
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
