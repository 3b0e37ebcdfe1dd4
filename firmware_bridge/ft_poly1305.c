/*
 * ft_poly1305.c - Poly1305 (RFC 8439 §2.5) and AEAD_CHACHA20_POLY1305 (§2.8).
 *
 * The accumulator h and the key part r live in five 26-bit limbs, so a product of two limbs plus
 * the sums of a block multiplication stays below 2^64 (32x32->64 multiplies: one UMULL/UMLAL each
 * on a Cortex-M4). Reduction modulo p = 2^130 - 5 folds the limb above 2^130 back times 5. The
 * final reduction selects h or h - p with a mask; the tag comparison is ft_ct_equal.
 */
#include "ft_crypto.h"

#include <string.h>

#define M26 0x3ffffffu

void ft_poly1305_init(ft_poly1305_ctx *ctx, const uint8_t key[FT_POLY1305_KEY_BYTES])
{
    /* r = key[0..16) clamped (RFC 8439 §2.5), split into 26-bit limbs */
    const uint32_t t0 = FT_GET_U32_LE(key, 0), t1 = FT_GET_U32_LE(key, 4);
    const uint32_t t2 = FT_GET_U32_LE(key, 8), t3 = FT_GET_U32_LE(key, 12);
    ctx->r[0] = t0 & 0x3ffffffu;
    ctx->r[1] = ((t0 >> 26) | (t1 << 6)) & 0x3ffff03u;
    ctx->r[2] = ((t1 >> 20) | (t2 << 12)) & 0x3ffc0ffu;
    ctx->r[3] = ((t2 >> 14) | (t3 << 18)) & 0x3f03fffu;
    ctx->r[4] = (t3 >> 8) & 0x00fffffu;
    memset(ctx->h, 0, sizeof ctx->h);
    ctx->pad[0] = FT_GET_U32_LE(key, 16);
    ctx->pad[1] = FT_GET_U32_LE(key, 20);
    ctx->pad[2] = FT_GET_U32_LE(key, 24);
    ctx->pad[3] = FT_GET_U32_LE(key, 28);
    ctx->used = 0;
}

/* h = (h + m) * r mod p for one 16-byte block; hibit = 2^128 as limb-4 bit 24, or 0 for the
 * padded last block (whose 0x01 byte is already in m). */
static void poly1305_block(ft_poly1305_ctx *ctx, const uint8_t m[16], uint32_t hibit)
{
    const uint32_t r0 = ctx->r[0], r1 = ctx->r[1], r2 = ctx->r[2], r3 = ctx->r[3], r4 = ctx->r[4];
    const uint32_t s1 = r1 * 5u, s2 = r2 * 5u, s3 = r3 * 5u, s4 = r4 * 5u; /* 2^130 = 5 mod p */
    uint32_t h0 = ctx->h[0], h1 = ctx->h[1], h2 = ctx->h[2], h3 = ctx->h[3], h4 = ctx->h[4];
    uint64_t d0, d1, d2, d3, d4;
    uint32_t c;

    h0 += FT_GET_U32_LE(m, 0) & M26;
    h1 += (FT_GET_U32_LE(m, 3) >> 2) & M26;
    h2 += (FT_GET_U32_LE(m, 6) >> 4) & M26;
    h3 += (FT_GET_U32_LE(m, 9) >> 6) & M26;
    h4 += (FT_GET_U32_LE(m, 12) >> 8) | hibit;

    d0 = (uint64_t)h0 * r0 + (uint64_t)h1 * s4 + (uint64_t)h2 * s3 + (uint64_t)h3 * s2 + (uint64_t)h4 * s1;
    d1 = (uint64_t)h0 * r1 + (uint64_t)h1 * r0 + (uint64_t)h2 * s4 + (uint64_t)h3 * s3 + (uint64_t)h4 * s2;
    d2 = (uint64_t)h0 * r2 + (uint64_t)h1 * r1 + (uint64_t)h2 * r0 + (uint64_t)h3 * s4 + (uint64_t)h4 * s3;
    d3 = (uint64_t)h0 * r3 + (uint64_t)h1 * r2 + (uint64_t)h2 * r1 + (uint64_t)h3 * r0 + (uint64_t)h4 * s4;
    d4 = (uint64_t)h0 * r4 + (uint64_t)h1 * r3 + (uint64_t)h2 * r2 + (uint64_t)h3 * r1 + (uint64_t)h4 * r0;

    c = (uint32_t)(d0 >> 26); h0 = (uint32_t)d0 & M26;
    d1 += c; c = (uint32_t)(d1 >> 26); h1 = (uint32_t)d1 & M26;
    d2 += c; c = (uint32_t)(d2 >> 26); h2 = (uint32_t)d2 & M26;
    d3 += c; c = (uint32_t)(d3 >> 26); h3 = (uint32_t)d3 & M26;
    d4 += c; c = (uint32_t)(d4 >> 26); h4 = (uint32_t)d4 & M26;
    h0 += c * 5u; c = h0 >> 26; h0 &= M26;
    h1 += c;

    ctx->h[0] = h0; ctx->h[1] = h1; ctx->h[2] = h2; ctx->h[3] = h3; ctx->h[4] = h4;
}

void ft_poly1305_update(ft_poly1305_ctx *ctx, const uint8_t *data, size_t len)
{
    size_t take;
    if (ctx->used > 0) {
        take = 16u - ctx->used < len ? 16u - ctx->used : len;
        memcpy(ctx->buf + ctx->used, data, take);
        ctx->used += take;
        data += take;
        len -= take;
        if (ctx->used < 16u) {
            return;
        }
        poly1305_block(ctx, ctx->buf, 1u << 24);
        ctx->used = 0;
    }
    while (len >= 16u) {
        poly1305_block(ctx, data, 1u << 24);
        data += 16;
        len -= 16;
    }
    if (len > 0) {
        memcpy(ctx->buf, data, len);
        ctx->used = len;
    }
}

void ft_poly1305_finish(ft_poly1305_ctx *ctx, uint8_t tag[FT_POLY1305_TAG_BYTES])
{
    uint32_t h0, h1, h2, h3, h4, g0, g1, g2, g3, g4, c, mask;
    uint64_t f;

    if (ctx->used > 0) { /* the last partial block: its bytes, 0x01, zeros; no 2^128 bit */
        ctx->buf[ctx->used] = 1;
        memset(ctx->buf + ctx->used + 1, 0, 16u - ctx->used - 1u);
        poly1305_block(ctx, ctx->buf, 0);
    }
    h0 = ctx->h[0]; h1 = ctx->h[1]; h2 = ctx->h[2]; h3 = ctx->h[3]; h4 = ctx->h[4];

    /* carry fully */
    c = h1 >> 26; h1 &= M26; h2 += c;
    c = h2 >> 26; h2 &= M26; h3 += c;
    c = h3 >> 26; h3 &= M26; h4 += c;
    c = h4 >> 26; h4 &= M26; h0 += c * 5u;
    c = h0 >> 26; h0 &= M26; h1 += c;

    /* g = h + 5 - 2^130 = h - p; keep g where it is not negative */
    g0 = h0 + 5u; c = g0 >> 26; g0 &= M26;
    g1 = h1 + c; c = g1 >> 26; g1 &= M26;
    g2 = h2 + c; c = g2 >> 26; g2 &= M26;
    g3 = h3 + c; c = g3 >> 26; g3 &= M26;
    g4 = h4 + c - (1u << 26);
    mask = (g4 >> 31) - 1u; /* all ones if g >= 0 (h >= p) */
    h0 = (h0 & ~mask) | (g0 & mask);
    h1 = (h1 & ~mask) | (g1 & mask);
    h2 = (h2 & ~mask) | (g2 & mask);
    h3 = (h3 & ~mask) | (g3 & mask);
    h4 = (h4 & ~mask) | (g4 & mask);

    /* h mod 2^128 in four words, plus s */
    h0 = h0 | (h1 << 26);
    h1 = (h1 >> 6) | (h2 << 20);
    h2 = (h2 >> 12) | (h3 << 14);
    h3 = (h3 >> 18) | (h4 << 8);
    f = (uint64_t)h0 + ctx->pad[0]; h0 = (uint32_t)f;
    f = (uint64_t)h1 + ctx->pad[1] + (f >> 32); h1 = (uint32_t)f;
    f = (uint64_t)h2 + ctx->pad[2] + (f >> 32); h2 = (uint32_t)f;
    f = (uint64_t)h3 + ctx->pad[3] + (f >> 32); h3 = (uint32_t)f;
    FT_PUT_U32_LE(h0, tag, 0);
    FT_PUT_U32_LE(h1, tag, 4);
    FT_PUT_U32_LE(h2, tag, 8);
    FT_PUT_U32_LE(h3, tag, 12);
    ft_zeroize(ctx, sizeof *ctx);
}

void ft_poly1305(const uint8_t key[FT_POLY1305_KEY_BYTES], const uint8_t *data, size_t len,
                 uint8_t tag[FT_POLY1305_TAG_BYTES])
{
    ft_poly1305_ctx ctx;
    ft_poly1305_init(&ctx, key);
    ft_poly1305_update(&ctx, data, len);
    ft_poly1305_finish(&ctx, tag);
}

/* ---- AEAD ------------------------------------------------------------------------------------- */

static const uint8_t k_zeros[16] = {0};

/* The tag over aad | pad16 | ct | pad16 | le64(aad_len) | le64(len), with the one-time key from
 * ChaCha20 block 0 (RFC 8439 §2.6). */
static void aead_tag(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
                     const uint8_t *ct, size_t len, uint8_t tag[16])
{
    ft_poly1305_ctx ctx;
    uint8_t block[FT_CHACHA20_BLOCK_BYTES];
    uint8_t lens[16];
    unsigned i;

    ft_chacha20_block(key, 0, nonce, block);
    ft_poly1305_init(&ctx, block);
    ft_zeroize(block, sizeof block);
    if (aad_len > 0) {
        ft_poly1305_update(&ctx, aad, aad_len);
        ft_poly1305_update(&ctx, k_zeros, (16u - aad_len % 16u) % 16u);
    }
    if (len > 0) {
        ft_poly1305_update(&ctx, ct, len);
        ft_poly1305_update(&ctx, k_zeros, (16u - len % 16u) % 16u);
    }
    for (i = 0; i < 8; i++) {
        lens[i] = (uint8_t)((uint64_t)aad_len >> (8 * i));
        lens[8 + i] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    ft_poly1305_update(&ctx, lens, sizeof lens);
    ft_poly1305_finish(&ctx, tag);
}

static int aead_args_ok(const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                        const uint8_t *in, size_t len, const uint8_t *out, const uint8_t *tag)
{
    if (key == NULL || nonce == NULL || tag == NULL) {
        return 0;
    }
    /* A length beyond counters 1 .. 2^32 - 1 (256 GB) is refused by ft_chacha20_xor. */
    return !((aad_len > 0 && aad == NULL) || (len > 0 && (in == NULL || out == NULL)));
}

int ft_aead_chacha20poly1305_encrypt(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                                     size_t aad_len, const uint8_t *pt, size_t len, uint8_t *ct, uint8_t tag[16])
{
    int st;
    if (!aead_args_ok(key, nonce, aad, aad_len, pt, len, ct, tag)) {
        return FT_WIRE_ERR_ARG;
    }
    st = ft_chacha20_xor(key, 1, nonce, pt, ct, len);
    if (st != FT_WIRE_OK) {
        return st;
    }
    aead_tag(key, nonce, aad, aad_len, ct, len, tag);
    return FT_WIRE_OK;
}

int ft_aead_chacha20poly1305_decrypt(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                                     size_t aad_len, const uint8_t *ct, size_t len, const uint8_t tag[16],
                                     uint8_t *pt)
{
    uint8_t want[16];
    int ok;
    if (!aead_args_ok(key, nonce, aad, aad_len, ct, len, pt, tag)) {
        return FT_WIRE_ERR_ARG;
    }
    aead_tag(key, nonce, aad, aad_len, ct, len, want);
    ok = ft_ct_equal(want, tag, sizeof want);
    ft_zeroize(want, sizeof want);
    if (!ok) { /* nothing of the plaintext is released */
        if (len > 0) {
            ft_zeroize(pt, len);
        }
        return FT_WIRE_ERR_BAD_TAG;
    }
    return ft_chacha20_xor(key, 1, nonce, ct, pt, len);
}
