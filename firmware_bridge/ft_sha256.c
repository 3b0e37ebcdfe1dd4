/*
 * ft_sha256.c - SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), written the way mbedtls
 * library/sha256.c is: init / update / finish, explicit big-endian loads and stores, uint32_t
 * arithmetic only, every secret zeroized before the memory is given back.
 */
#include "ft_wire.h"

#include <string.h>

#define FT_GET_U32_BE(b, i)                                                               \
    (((uint32_t)(b)[(i)] << 24) | ((uint32_t)(b)[(i) + 1] << 16) |                        \
     ((uint32_t)(b)[(i) + 2] << 8) | ((uint32_t)(b)[(i) + 3]))
#define FT_PUT_U32_BE(n, b, i)                                                            \
    do {                                                                                  \
        (b)[(i)] = (uint8_t)((n) >> 24);                                                  \
        (b)[(i) + 1] = (uint8_t)((n) >> 16);                                              \
        (b)[(i) + 2] = (uint8_t)((n) >> 8);                                               \
        (b)[(i) + 3] = (uint8_t)(n);                                                      \
    } while (0)

static const uint32_t K[64] = {
    0x428A2F98u, 0x71374491u, 0xB5C0FBCFu, 0xE9B5DBA5u, 0x3956C25Bu, 0x59F111F1u, 0x923F82A4u,
    0xAB1C5ED5u, 0xD807AA98u, 0x12835B01u, 0x243185BEu, 0x550C7DC3u, 0x72BE5D74u, 0x80DEB1FEu,
    0x9BDC06A7u, 0xC19BF174u, 0xE49B69C1u, 0xEFBE4786u, 0x0FC19DC6u, 0x240CA1CCu, 0x2DE92C6Fu,
    0x4A7484AAu, 0x5CB0A9DCu, 0x76F988DAu, 0x983E5152u, 0xA831C66Du, 0xB00327C8u, 0xBF597FC7u,
    0xC6E00BF3u, 0xD5A79147u, 0x06CA6351u, 0x14292967u, 0x27B70A85u, 0x2E1B2138u, 0x4D2C6DFCu,
    0x53380D13u, 0x650A7354u, 0x766A0ABBu, 0x81C2C92Eu, 0x92722C85u, 0xA2BFE8A1u, 0xA81A664Bu,
    0xC24B8B70u, 0xC76C51A3u, 0xD192E819u, 0xD6990624u, 0xF40E3585u, 0x106AA070u, 0x19A4C116u,
    0x1E376C08u, 0x2748774Cu, 0x34B0BCB5u, 0x391C0CB3u, 0x4ED8AA4Au, 0x5B9CCA4Fu, 0x682E6FF3u,
    0x748F82EEu, 0x78A5636Fu, 0x84C87814u, 0x8CC70208u, 0x90BEFFFAu, 0xA4506CEBu, 0xBEF9A3F7u,
    0xC67178F2u,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define S0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define S1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define s0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define s1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

void ft_zeroize(void *p, size_t n)
{
    /* Writes through a volatile pointer are observable, so they survive dead-store removal. */
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) {
        *v++ = 0;
    }
}

int ft_ct_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint8_t diff = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        diff |= (uint8_t)(a[i] ^ b[i]);
    }
    /* (diff - 1) >> 8 is 1 only for diff == 0; no data-dependent branch. */
    return (int)((((uint32_t)diff - 1u) >> 8) & 1u);
}

/* One 64-byte block. The 16-word rolling schedule keeps the stack small for firmware. This is
 * the reference: the accelerated block function below must give the same state bit for bit. */
static void sha256_block_ref(uint32_t state[8], const uint8_t block[64])
{
    uint32_t W[16];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    uint32_t t1, t2;
    unsigned i;

    for (i = 0; i < 64; i++) {
        if (i < 16) {
            W[i] = FT_GET_U32_BE(block, 4 * i);
        } else {
            W[i & 15] += s1(W[(i - 2) & 15]) + W[(i - 7) & 15] + s0(W[(i - 15) & 15]);
        }
        t1 = h + S1(e) + CH(e, f, g) + K[i] + W[i & 15];
        t2 = S0(a) + MAJ(a, b, c);
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
    ft_zeroize(W, sizeof W);
}

#if FT_WIRE_SHANI
/*
 * x86 SHA extensions (SHA-NI), for the host: the aggregator authenticates every datagram, and
 * the portable block function costs it about 8 us per 1.2 KB frame. Chosen at run time from
 * cpuid, so one build runs on any x86-64; the state is kept in the same eight words as the
 * reference. sha256rnds2 works on the state split as (A,B,E,F) and (C,D,G,H) and does two
 * rounds with the two message+constant words in the low half of its third operand.
 */
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("sha,sse4.1,ssse3")))
static void sha256_block_shani(uint32_t state[8], const uint8_t block[64])
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&state[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    const __m128i abef0 = abef, cdgh0 = cdgh;
    __m128i w[4], wk, fegh, dchg;
    unsigned g;

    for (g = 0; g < 16; g++) {     /* four rounds per step: W[4g .. 4g+3] */
        if (g < 4) {
            w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * g)), bswap);
        } else {                   /* w[g&3] holds W[4g-16..], w[(g+1)&3] W[4g-12..], ... */
            __m128i t = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
            t = _mm_add_epi32(t, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
            w[g & 3] = _mm_sha256msg2_epu32(t, w[(g + 3) & 3]);
        }
        wk = _mm_add_epi32(w[g & 3], _mm_loadu_si128((const __m128i *)&K[4 * g]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
    }
    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
    fegh = _mm_shuffle_epi32(abef, 0x1B);     /* F E B A */
    dchg = _mm_shuffle_epi32(cdgh, 0xB1);     /* D C H G */
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(fegh, dchg, 0xF0));   /* D C B A */
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, fegh, 8));       /* H G F E */
}

static int sha256_shani_usable(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9))) {   /* SSE4.1, SSSE3 */
        return 0;
    }
    if (__get_cpuid_max(0, 0) < 7) {
        return 0;
    }
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1u;                                                            /* SHA */
}

static int sha256_use_shani = -1;   /* -1: not decided yet; idempotent, so a race is harmless */

int ft_sha256_accel(int mode)
{
    if (mode == 0) {
        sha256_use_shani = 0;
    } else if (mode > 0 || sha256_use_shani < 0) {
        sha256_use_shani = sha256_shani_usable();
    }
    return sha256_use_shani;
}

static void sha256_block(uint32_t state[8], const uint8_t block[64])
{
    if (sha256_use_shani < 0) {
        sha256_use_shani = sha256_shani_usable();
    }
    if (sha256_use_shani) {
        sha256_block_shani(state, block);
    } else {
        sha256_block_ref(state, block);
    }
}
#else
int ft_sha256_accel(int mode)
{
    (void)mode;
    return 0;
}

static void sha256_block(uint32_t state[8], const uint8_t block[64])
{
    sha256_block_ref(state, block);
}
#endif

void ft_sha256_init(ft_sha256_ctx *ctx)
{
    ctx->state[0] = 0x6A09E667u;
    ctx->state[1] = 0xBB67AE85u;
    ctx->state[2] = 0x3C6EF372u;
    ctx->state[3] = 0xA54FF53Au;
    ctx->state[4] = 0x510E527Fu;
    ctx->state[5] = 0x9B05688Cu;
    ctx->state[6] = 0x1F83D9ABu;
    ctx->state[7] = 0x5BE0CD19u;
    ctx->total_lo = 0;
    ctx->total_hi = 0;
    memset(ctx->buffer, 0, sizeof ctx->buffer);
}

void ft_sha256_update(ft_sha256_ctx *ctx, const uint8_t *data, size_t len)
{
    size_t fill = ctx->total_lo & 63u;
    size_t take;

    while (len > 0) {
        take = 64u - fill;
        if (take > len) {
            take = len;
        }
        /* 64-bit byte counter kept as two words: firmware targets lack cheap uint64_t math. */
        ctx->total_lo += (uint32_t)take;
        if (ctx->total_lo < (uint32_t)take) {
            ctx->total_hi++;
        }
        if (fill == 0 && take == 64u) {
            sha256_block(ctx->state, data);
        } else {
            memcpy(ctx->buffer + fill, data, take);
            if (fill + take == 64u) {
                sha256_block(ctx->state, ctx->buffer);
            }
        }
        data += take;
        len -= take;
        fill = 0;
    }
}

void ft_sha256_finish(ft_sha256_ctx *ctx, uint8_t out[FT_SHA256_BYTES])
{
    uint32_t used = ctx->total_lo & 63u;
    uint32_t bits_hi = (ctx->total_hi << 3) | (ctx->total_lo >> 29);
    uint32_t bits_lo = ctx->total_lo << 3;
    unsigned i;

    ctx->buffer[used++] = 0x80u;
    if (used > 56u) {
        memset(ctx->buffer + used, 0, 64u - used);
        sha256_block(ctx->state, ctx->buffer);
        used = 0;
    }
    memset(ctx->buffer + used, 0, 56u - used);
    FT_PUT_U32_BE(bits_hi, ctx->buffer, 56);
    FT_PUT_U32_BE(bits_lo, ctx->buffer, 60);
    sha256_block(ctx->state, ctx->buffer);
    for (i = 0; i < 8; i++) {
        FT_PUT_U32_BE(ctx->state[i], out, 4 * i);
    }
    ft_zeroize(ctx, sizeof *ctx);
}

void ft_sha256(const uint8_t *data, size_t len, uint8_t out[FT_SHA256_BYTES])
{
    ft_sha256_ctx ctx;
    ft_sha256_init(&ctx);
    ft_sha256_update(&ctx, data, len);
    ft_sha256_finish(&ctx, out);
}

void ft_hmac_sha256_init(ft_hmac_sha256_ctx *ctx, const uint8_t *key, size_t key_len)
{
    uint8_t k[FT_SHA256_BLOCK];
    uint8_t ipad[FT_SHA256_BLOCK];
    unsigned i;

    memset(k, 0, sizeof k);
    if (key_len > FT_SHA256_BLOCK) {
        ft_sha256(key, key_len, k);
    } else if (key_len > 0) {
        memcpy(k, key, key_len);
    }
    for (i = 0; i < FT_SHA256_BLOCK; i++) {
        ipad[i] = (uint8_t)(k[i] ^ 0x36u);
        ctx->opad[i] = (uint8_t)(k[i] ^ 0x5Cu);
    }
    ft_sha256_init(&ctx->inner);
    ft_sha256_update(&ctx->inner, ipad, sizeof ipad);
    ft_zeroize(k, sizeof k);
    ft_zeroize(ipad, sizeof ipad);
}

void ft_hmac_sha256_update(ft_hmac_sha256_ctx *ctx, const uint8_t *data, size_t len)
{
    ft_sha256_update(&ctx->inner, data, len);
}

void ft_hmac_sha256_finish(ft_hmac_sha256_ctx *ctx, uint8_t out[FT_SHA256_BYTES])
{
    uint8_t inner_hash[FT_SHA256_BYTES];
    ft_sha256_finish(&ctx->inner, inner_hash);
    /* ctx->inner is zeroized by finish; reuse it for the outer hash. */
    ft_sha256_init(&ctx->inner);
    ft_sha256_update(&ctx->inner, ctx->opad, sizeof ctx->opad);
    ft_sha256_update(&ctx->inner, inner_hash, sizeof inner_hash);
    ft_sha256_finish(&ctx->inner, out);
    ft_zeroize(inner_hash, sizeof inner_hash);
    ft_zeroize(ctx, sizeof *ctx);
}

void ft_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                    uint8_t out[FT_SHA256_BYTES])
{
    ft_hmac_sha256_ctx ctx;
    ft_hmac_sha256_init(&ctx, key, key_len);
    ft_hmac_sha256_update(&ctx, data, len);
    ft_hmac_sha256_finish(&ctx, out);
}

#if FT_WIRE_SELFTEST
/* FIPS 180-4 example "abc", RFC 4231 test cases 1 and 2, CRC-32 check value. The full
 * FIPS/RFC vector sets run in firmware_bridge/tests/test_sha256.c and tests/test_wire_kat.py. */
static const uint8_t KAT_ABC[32] = {
    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
static const uint8_t KAT_HMAC1[32] = {
    0xb0, 0x34, 0x4c, 0x61, 0xd8, 0xdb, 0x38, 0x53, 0x5c, 0xa8, 0xaf, 0xce, 0xaf, 0x0b, 0xf1, 0x2b,
    0x88, 0x1d, 0xc2, 0x00, 0xc9, 0x83, 0x3d, 0xa7, 0x26, 0xe9, 0x37, 0x6c, 0x2e, 0x32, 0xcf, 0xf7};
static const uint8_t KAT_HMAC2[32] = {
    0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
    0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};

int ft_wire_self_test(void)
{
    uint8_t out[32];
    uint8_t key[20];
    int ok;

    ft_sha256((const uint8_t *)"abc", 3, out);
    ok = ft_ct_equal(out, KAT_ABC, 32);
    memset(key, 0x0b, sizeof key);
    ft_hmac_sha256(key, 20, (const uint8_t *)"Hi There", 8, out);
    ok &= ft_ct_equal(out, KAT_HMAC1, 32);
    ft_hmac_sha256((const uint8_t *)"Jefe", 4, (const uint8_t *)"what do ya want for nothing?", 28,
                   out);
    ok &= ft_ct_equal(out, KAT_HMAC2, 32);
    ok &= ft_crc32(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u;
    return ok ? FT_WIRE_OK : FT_WIRE_ERR_SELFTEST;
}
#endif
