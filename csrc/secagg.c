/* secagg.c — the secure-aggregation kernels (fedtiny.h "secure aggregation"): one generic body per
 * kernel, parameterized by the ChaCha20 block generator. The `_ref` entry points run it with the
 * scalar generator (firmware_bridge/ft_chacha20.c, the spec); the public ones with the generator
 * of the selected SIMD path. Vectors are processed in chunks of FT_SECAGG_CHUNK elements so every
 * stream chunk stays in L1 while it is consumed; no allocation, the stream buffer lives on the
 * stack and is wiped before returning (mask words are secret). */
#include <float.h>
#include <math.h>
#include <string.h>

#include "ft_crypto.h"
#include "ft_internal.h"

/* Elements per pass; the stack holds 8 * FT_SECAGG_CHUNK + 64 bytes (4,160). A firmware with a small
 * stack may build with -DFT_SECAGG_CHUNK=64 (576 bytes): the results are the same, only slower. */
#ifndef FT_SECAGG_CHUNK
#define FT_SECAGG_CHUNK 512
#endif

_Static_assert(sizeof(FT_SECAGG_MASK_NONCE) - 1 == FT_CHACHA20_NONCE_BYTES, "mask nonce is 12 bytes");
_Static_assert(sizeof(FT_SECAGG_ROUND_NONCE) - 1 == FT_CHACHA20_NONCE_BYTES, "rounding nonce is 12 bytes");

/* ---- scalar references of the per-path pieces ------------------------------------------------ */

void ft_chacha20_blocks_ref(const uint32_t state[16], size_t nblocks, uint8_t *out) {
    uint32_t st[16], ks[16];
    memcpy(st, state, sizeof st);
    for (size_t b = 0; b < nblocks; b++) {
        ft_chacha20_core(st, ks);
        memcpy(out + 64 * b, ks, 64); /* little-endian host (ft_internal.h): the RFC's byte order */
        st[12]++;
    }
}

double ft_l2sq_f32_ref(const float *x, size_t n) {
    double lane[16] = {0};
    for (size_t i = 0; i < n; i++) lane[i % 16] += (double)x[i] * (double)x[i]; /* exact squares */
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) lane[j] += lane[j + w];
    return lane[0];
}

/* Sums modulo 2^b, any b in 2..32 (the scalar references; x86_*_secagg.c hold the SIMD paths). */
void ft_add_mod_u32_body_ref(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask) {
    for (size_t i = 0; i < n; i++) acc[i] = (acc[i] + x[i]) & mask;
}
void ft_decode_mod_u32_body_ref(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = (float)((double)ft_centered_u32(sum[i], shift) * scale);
}

static const ft_secagg_kernel_table k_ref = {ft_chacha20_blocks_ref, ft_l2sq_f32_ref, ft_add_mod_u32_body_ref,
                                             ft_decode_mod_u32_body_ref};
#if FT_ARCH_X86
static const ft_secagg_kernel_table k_avx2 = {ft_chacha20_blocks_avx2, ft_l2sq_f32_avx2, ft_add_mod_u32_avx2,
                                              ft_decode_mod_u32_avx2};
static const ft_secagg_kernel_table k_avx512 = {ft_chacha20_blocks_avx512, ft_l2sq_f32_avx512, ft_add_mod_u32_avx512,
                                                ft_decode_mod_u32_avx512};
#endif
#if FT_ARCH_ARM64
/* the modular sum and decode are memory-bound: the scalar ones (the compiler vectorizes them) */
static const ft_secagg_kernel_table k_neon = {ft_chacha20_blocks_neon, ft_l2sq_f32_ref, ft_add_mod_u32_body_ref,
                                              ft_decode_mod_u32_body_ref};
#endif

const ft_secagg_kernel_table *ft_secagg_kernels(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return &k_avx2;
    case FT_SIMD_AVX512: return &k_avx512;
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return &k_neon; /* the sum of squares is memory-bound: the scalar one */
#endif
    default: return &k_ref;
    }
}

/* ---- streams ----------------------------------------------------------------------------------- */

/* Zero secret stream bytes; the empty asm that "reads" the memory keeps the compiler from
 * dropping the memset as a dead store (a volatile byte loop costs a store per byte). */
static void wipe(void *p, size_t n) {
#if defined(__GNUC__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) *v++ = 0;
#endif
}

/* Words [first, first + count) of w bytes of the stream (key, nonce) as bytes in buf (which holds
 * count * w + 64 bytes); returns the address of word `first`. */
static inline const uint8_t *stream_words(ft_chacha20_blocks_fn gen, const uint8_t *key, const char *nonce,
                                          uint64_t first, size_t count, unsigned w, uint8_t *buf) {
    const uint64_t p0 = first * w;
    const size_t skip = (size_t)(p0 % 64);
    uint32_t st[16];
    ft_chacha20_init(st, key, (uint32_t)(p0 / 64), (const uint8_t *)nonce);
    gen(st, (skip + count * w + 63) / 64, buf);
    wipe(st, sizeof st);
    return buf + skip;
}

static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* acc[i] += sign * word i of a w-byte stream chunk (mod 2^32; the caller truncates to 2^b). */
static inline void add_words(uint32_t *acc, const uint8_t *mk, size_t len, unsigned w, int sign) {
    if (w == 2) {
        if (sign > 0) for (size_t i = 0; i < len; i++) acc[i] += load_u16(mk + 2 * i);
        else          for (size_t i = 0; i < len; i++) acc[i] -= load_u16(mk + 2 * i);
    } else {
        if (sign > 0) for (size_t i = 0; i < len; i++) acc[i] += load_u32(mk + 4 * i);
        else          for (size_t i = 0; i < len; i++) acc[i] -= load_u32(mk + 4 * i);
    }
}

/* ---- argument checks (shared by the public and the _ref entry points) ------------------------- */

static int words_fit(size_t offset, size_t n, unsigned w) {
    const uint64_t max = FT_SECAGG_MAX_WORDS(w);
    return (uint64_t)offset <= max && (uint64_t)n <= max - (uint64_t)offset;
}

static int masks_ok(const uint8_t *seeds, const int8_t *signs, size_t n_masks) {
    if (n_masks == 0) return 1;
    if (!seeds || !signs) return 0;
    for (size_t j = 0; j < n_masks; j++)
        if (signs[j] != 1 && signs[j] != -1) return 0;
    return 1;
}

static ft_status encode_check(const float *x, size_t n, size_t offset, float scale, float step, uint32_t qmax,
                              const uint8_t *round_key, const uint8_t *seeds, const int8_t *signs, size_t n_masks,
                              const void *out, unsigned w) {
    const uint32_t qlimit = w == 2 ? 32767u : FT_SECAGG_MAX_QMAX;
    if (n > 0 && (!x || !out)) return FT_ERR_ARG;
    if (!round_key || !masks_ok(seeds, signs, n_masks)) return FT_ERR_ARG;
    if (!words_fit(offset, n, 4)) return FT_ERR_ARG; /* the rounding stream uses 4-byte words */
    if (!(scale >= 0.0f) || !isfinite(scale) || !(step > 0.0f) || !isfinite(step)) return FT_ERR_ARG;
    if (!isfinite(scale / step)) return FT_ERR_ARG;
    if (qmax < 1 || qmax > qlimit) return FT_ERR_ARG;
    return FT_OK;
}

/* ---- the generic bodies -------------------------------------------------------------------------- */

static inline ft_status encode_body(ft_chacha20_blocks_fn gen, const float *x, size_t n, size_t offset, float scale,
                                    float step, uint32_t qmax, const uint8_t *round_key, const uint8_t *seeds,
                                    const int8_t *signs, size_t n_masks, void *out, unsigned w) {
    uint8_t buf[4 * FT_SECAGG_CHUNK + 64];
    uint32_t acc[FT_SECAGG_CHUNK];
    const float m = scale / step, fq = (float)qmax;
    ft_status status = FT_OK;
    for (size_t i0 = 0; i0 < n && status == FT_OK; i0 += FT_SECAGG_CHUNK) {
        const size_t len = n - i0 < FT_SECAGG_CHUNK ? n - i0 : FT_SECAGG_CHUNK;
        const uint8_t *r = stream_words(gen, round_key, FT_SECAGG_ROUND_NONCE, (uint64_t)(offset + i0), len, 4, buf);
        uint32_t bad = 0; /* becomes 1 if some t is NaN/Inf (an OR reduction: it vectorizes) */
        for (size_t i = 0; i < len; i++) {
            float t = x[i0 + i] * m;
            bad |= !(fabsf(t) <= FLT_MAX);
            t = t >= -fq ? t : -fq; /* NaN goes to -qmax here: no undefined float-to-int cast */
            t = t <= fq ? t : fq;
            int32_t fl = (int32_t)t;          /* truncation, |t| <= 2^24 */
            fl -= (float)fl > t;              /* floor */
            const float frac = t - (float)fl; /* exact for |t| >= 1, within 2^-25 below */
            const float u = (float)(load_u32(r + 4 * i) >> 8) * 0x1p-24f;
            acc[i] = (uint32_t)fl + (uint32_t)(u < frac);
        }
        if (bad) {
            status = FT_ERR_NONFINITE;
            break;
        }
        for (size_t j = 0; j < n_masks; j++) {
            const uint8_t *mk = stream_words(gen, seeds + FT_SECAGG_SEED_BYTES * j, FT_SECAGG_MASK_NONCE,
                                             (uint64_t)(offset + i0), len, w, buf);
            add_words(acc, mk, len, w, signs[j]);
        }
        if (w == 2) {
            uint16_t *o = (uint16_t *)out + i0;
            for (size_t i = 0; i < len; i++) o[i] = (uint16_t)acc[i];
        } else {
            memcpy((uint32_t *)out + i0, acc, len * sizeof(uint32_t));
        }
    }
    wipe(buf, sizeof buf);
    wipe(acc, sizeof acc);
    return status;
}

/* v[i] += sign * word i of a stream chunk, in v's own width (the aggregator's in-place unmask). */
static inline void add_words_inplace(void *v, const uint8_t *mk, size_t len, unsigned w, int sign) {
    if (w == 2) {
        uint16_t *p = (uint16_t *)v;
        if (sign > 0) for (size_t i = 0; i < len; i++) p[i] = (uint16_t)(p[i] + load_u16(mk + 2 * i));
        else          for (size_t i = 0; i < len; i++) p[i] = (uint16_t)(p[i] - load_u16(mk + 2 * i));
    } else {
        uint32_t *p = (uint32_t *)v;
        if (sign > 0) for (size_t i = 0; i < len; i++) p[i] += load_u32(mk + 4 * i);
        else          for (size_t i = 0; i < len; i++) p[i] -= load_u32(mk + 4 * i);
    }
}

static inline void mask_body(ft_chacha20_blocks_fn gen, void *v, size_t n, size_t offset, const uint8_t *seeds,
                             const int8_t *signs, size_t n_masks, unsigned w) {
    uint8_t buf[4 * FT_SECAGG_CHUNK + 64];
    for (size_t i0 = 0; i0 < n; i0 += FT_SECAGG_CHUNK) {
        const size_t len = n - i0 < FT_SECAGG_CHUNK ? n - i0 : FT_SECAGG_CHUNK;
        for (size_t j = 0; j < n_masks; j++) {
            const uint8_t *mk = stream_words(gen, seeds + FT_SECAGG_SEED_BYTES * j, FT_SECAGG_MASK_NONCE,
                                             (uint64_t)(offset + i0), len, w, buf);
            add_words_inplace((uint8_t *)v + (size_t)w * i0, mk, len, w, signs[j]);
        }
    }
    wipe(buf, sizeof buf);
}

/* ---- entry points ------------------------------------------------------------------------------- */

#define FT_ENCODE(name, T, w, gen)                                                                           \
    ft_status name(const float *x, size_t n, size_t offset, float scale, float step, uint32_t qmax,          \
                   const uint8_t *round_key, const uint8_t *seeds, const int8_t *signs, size_t n_masks,      \
                   T *out) {                                                                                 \
        const ft_status st = encode_check(x, n, offset, scale, step, qmax, round_key, seeds, signs, n_masks, \
                                          out, w);                                                           \
        if (st != FT_OK) return st;                                                                          \
        return encode_body(gen, x, n, offset, scale, step, qmax, round_key, seeds, signs, n_masks, out, w); \
    }
FT_ENCODE(ft_secagg_encode_u16_ref, uint16_t, 2, ft_chacha20_blocks_ref)
FT_ENCODE(ft_secagg_encode_u32_ref, uint32_t, 4, ft_chacha20_blocks_ref)
FT_ENCODE(ft_secagg_encode_u16, uint16_t, 2, ft_secagg_kernels()->chacha20_blocks)
FT_ENCODE(ft_secagg_encode_u32, uint32_t, 4, ft_secagg_kernels()->chacha20_blocks)

#define FT_MASK(name, T, w, gen)                                                                             \
    ft_status name(T *v, size_t n, size_t offset, const uint8_t *seeds, const int8_t *signs, size_t n_masks) { \
        if ((n > 0 && !v) || !masks_ok(seeds, signs, n_masks) || !words_fit(offset, n, w)) return FT_ERR_ARG; \
        mask_body(gen, v, n, offset, seeds, signs, n_masks, w);                                              \
        return FT_OK;                                                                                        \
    }
FT_MASK(ft_secagg_mask_u16_ref, uint16_t, 2, ft_chacha20_blocks_ref)
FT_MASK(ft_secagg_mask_u32_ref, uint32_t, 4, ft_chacha20_blocks_ref)
FT_MASK(ft_secagg_mask_u16, uint16_t, 2, ft_secagg_kernels()->chacha20_blocks)
FT_MASK(ft_secagg_mask_u32, uint32_t, 4, ft_secagg_kernels()->chacha20_blocks)

/* Sums modulo 2^b and their centered decode: one rule for any b in 2..32 (b = 16 and 32 are the
 * element widths; the distributed discrete Gaussian uses any b). u16 elements: plain loops that the
 * compiler vectorizes at the baseline ISA (memory speed, bench/bench_secagg.py); u32 elements: the
 * kernel table's path (scalar reference, AVX2, AVX-512; bit-exact, tests/test_secagg_kernels.py). */
static inline int bits_ok(unsigned bits, unsigned width) { return bits >= 2 && bits <= width; }
static inline uint32_t mod_mask(unsigned bits) { return bits >= 32 ? 0xFFFFFFFFu : ((uint32_t)1 << bits) - 1u; }

ft_status ft_secagg_add_mod_u16(uint16_t *acc, const uint16_t *x, size_t n, unsigned bits) {
    if ((n > 0 && (!acc || !x)) || !bits_ok(bits, 16)) return FT_ERR_ARG;
    const uint16_t mask = (uint16_t)mod_mask(bits);
    for (size_t i = 0; i < n; i++) acc[i] = (uint16_t)((acc[i] + x[i]) & mask);
    return FT_OK;
}
#define FT_ADD_MOD(name, fn)                                                                  \
    ft_status name(uint32_t *acc, const uint32_t *x, size_t n, unsigned bits) {              \
        if ((n > 0 && (!acc || !x)) || !bits_ok(bits, 32)) return FT_ERR_ARG;                 \
        fn(acc, x, n, mod_mask(bits));                                                        \
        return FT_OK;                                                                         \
    }
FT_ADD_MOD(ft_secagg_add_mod_u32_ref, ft_add_mod_u32_body_ref)
FT_ADD_MOD(ft_secagg_add_mod_u32, ft_secagg_kernels()->add_mod_u32)

ft_status ft_secagg_add_u16(uint16_t *acc, const uint16_t *x, size_t n) { return ft_secagg_add_mod_u16(acc, x, n, 16); }
ft_status ft_secagg_add_u32(uint32_t *acc, const uint32_t *x, size_t n) { return ft_secagg_add_mod_u32(acc, x, n, 32); }

ft_status ft_secagg_decode_mod_u16(const uint16_t *sum, size_t n, unsigned bits, double scale, float *out) {
    if ((n > 0 && (!sum || !out)) || !isfinite(scale) || !bits_ok(bits, 16)) return FT_ERR_ARG;
    for (size_t i = 0; i < n; i++) out[i] = (float)((double)ft_centered_u32(sum[i], 32 - bits) * scale);
    return FT_OK;
}
#define FT_DECODE_MOD(name, fn)                                                                      \
    ft_status name(const uint32_t *sum, size_t n, unsigned bits, double scale, float *out) {        \
        if ((n > 0 && (!sum || !out)) || !isfinite(scale) || !bits_ok(bits, 32)) return FT_ERR_ARG; \
        fn(sum, n, 32 - bits, scale, out);                                                           \
        return FT_OK;                                                                                \
    }
FT_DECODE_MOD(ft_secagg_decode_mod_u32_ref, ft_decode_mod_u32_body_ref)
FT_DECODE_MOD(ft_secagg_decode_mod_u32, ft_secagg_kernels()->decode_mod_u32)

ft_status ft_secagg_decode_u16(const uint16_t *sum, size_t n, double scale, float *out) {
    return ft_secagg_decode_mod_u16(sum, n, 16, scale, out);
}
ft_status ft_secagg_decode_u32(const uint32_t *sum, size_t n, double scale, float *out) {
    return ft_secagg_decode_mod_u32(sum, n, 32, scale, out);
}

ft_status ft_l2norm_f32_ref(const float *x, size_t n, double *norm) {
    if ((n > 0 && !x) || !norm) return FT_ERR_ARG;
    const double s = ft_l2sq_f32_ref(x, n);
    if (!isfinite(s)) return FT_ERR_NONFINITE;
    *norm = sqrt(s);
    return FT_OK;
}
ft_status ft_l2norm_f32(const float *x, size_t n, double *norm) {
    if ((n > 0 && !x) || !norm) return FT_ERR_ARG;
    const double s = ft_secagg_kernels()->l2sq_f32(x, n);
    if (!isfinite(s)) return FT_ERR_NONFINITE;
    *norm = sqrt(s);
    return FT_OK;
}

static ft_status stream_check(const uint8_t *key, const uint8_t *nonce, uint32_t counter0, size_t nblocks,
                              const uint8_t *out) {
    if (!key || !nonce || (nblocks > 0 && !out)) return FT_ERR_ARG;
    if ((uint64_t)nblocks > ((uint64_t)1 << 32) - counter0) return FT_ERR_ARG;
    return FT_OK;
}
ft_status ft_chacha20_stream_ref(const uint8_t *key, const uint8_t *nonce, uint32_t counter0, size_t nblocks,
                                 uint8_t *out) {
    uint32_t st[16];
    const ft_status s = stream_check(key, nonce, counter0, nblocks, out);
    if (s != FT_OK) return s;
    ft_chacha20_init(st, key, counter0, nonce);
    ft_chacha20_blocks_ref(st, nblocks, out);
    wipe(st, sizeof st);
    return FT_OK;
}
ft_status ft_chacha20_stream(const uint8_t *key, const uint8_t *nonce, uint32_t counter0, size_t nblocks,
                             uint8_t *out) {
    uint32_t st[16];
    const ft_status s = stream_check(key, nonce, counter0, nblocks, out);
    if (s != FT_OK) return s;
    ft_chacha20_init(st, key, counter0, nonce);
    ft_secagg_kernels()->chacha20_blocks(st, nblocks, out);
    wipe(st, sizeof st);
    return FT_OK;
}
