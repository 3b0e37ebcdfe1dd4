/* ft_internal.h — shared by the kernel sources only: the dispatch table, the per-architecture
 * entry points and small inline helpers that every path must compute identically. */
#ifndef FT_INTERNAL_H
#define FT_INTERNAL_H

#include <string.h>

#include "fedtiny.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedtiny kernels read the wire layout in place and need a little-endian CPU"
#endif

/* A block may sit at any byte offset of a received datagram: read its scale with memcpy. */
static inline float ft_block_d(const ft_block_q8 *b) {
    float d;
    memcpy(&d, &b->d, sizeof d);
    return d;
}

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define FT_ARCH_X86 1
#endif
#if defined(__aarch64__)
#define FT_ARCH_ARM64 1
#endif
/* 32-bit Arm application processors under Linux (Raspberry Pi OS armhf): NEON is optional in
 * ARMv7-A, so it is chosen at run time from the kernel's HWCAP (not for Cortex-M: no NEON). */
#if defined(__arm__) && !defined(__aarch64__) && defined(__linux__) && defined(__ARM_ARCH_PROFILE) && \
    __ARM_ARCH_PROFILE == 'A' && __ARM_ARCH >= 7
#define FT_ARCH_ARM32 1
#endif

/* One entry per kernel; dispatch.c fills one table per SIMD level. A path that has no
 * version of a kernel points at the scalar reference (ggml arch-fallback style). */
typedef struct {
    ft_status (*quantize_q8)(const float *, size_t, float *, ft_rounding, uint64_t, ft_block_q8 *);
    ft_status (*dequantize_q8)(const ft_block_q8 *, size_t, float *);
    ft_status (*fedavg_acc_q8)(float *, const ft_block_q8 *, size_t, float);
    ft_status (*fedavg_acc_f32)(float *, const float *, size_t, float);
    ft_status (*fedavg_apply_f32)(float *, float *, size_t, float);
} ft_kernel_table;

const ft_kernel_table *ft_kernels(void);

/* lowbias32 (Chris Wellons' integer hash): a bijection on uint32 with good avalanche. */
static inline uint32_t ft_hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
/* Counter for parameter i: spread i with a golden-ratio multiply, add the key, hash. */
static inline uint32_t ft_rng_bits(uint32_t i, uint32_t key) { return ft_hash32(i * 0x9E3779B1U + key); }
/* Uniform in [0, 1) with 24 bits, exact in float32. */
static inline float ft_rng_u01(uint32_t i, uint32_t key) { return (float)(ft_rng_bits(i, key) >> 8) * 0x1p-24f; }

/* The quantizers read each block twice (max, then round) and prefetch this many floats ahead
 * (4 blocks): measured 1.7x faster at 20M parameters with AVX-512 (bench/bench_codec.py). */
#define FT_Q8_PREFETCH (4 * FT_QK)

/* Block scale from the block's largest magnitude; identical on every path. */
static inline void ft_q8_scale(float amax, float *d, float *id) {
    if (amax < FT_Q8_MIN_AMAX) { *d = 0.0f; *id = 0.0f; return; }
    *d = amax / 127.0f;
    *id = 1.0f / *d;
}

ft_status ft_q8_quantize_block_ref(const float *x, size_t len, float *residual, ft_rounding rounding,
                                   uint32_t key, uint32_t i0, ft_block_q8 *out);

/* Update norm (csrc/norm_ref.c): sum of q^2 over a block's first len values (exact), and the
 * block's float64 term (d*d)*sumsq; every path adds these terms in block order. */
uint32_t ft_q8_block_sumsq_ref(const ft_block_q8 *b, size_t len);
double ft_q8_block_term(const ft_block_q8 *b, uint32_t sumsq);
#if FT_ARCH_X86
ft_status ft_sumsq_q8_avx2(const ft_block_q8 *in, size_t n, double *out);
ft_status ft_sumsq_q8_avx512(const ft_block_q8 *in, size_t n, double *out);
#endif
#if FT_ARCH_ARM64
ft_status ft_sumsq_q8_neon(const ft_block_q8 *in, size_t n, double *out);
#endif

#if FT_ARCH_X86
#define FT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma")))
extern const ft_kernel_table ft_kernels_avx2;
ft_status ft_quantize_q8_avx2(const float *, size_t, float *, ft_rounding, uint64_t, ft_block_q8 *);
ft_status ft_dequantize_q8_avx2(const ft_block_q8 *, size_t, float *);
ft_status ft_fedavg_acc_q8_avx2(float *, const ft_block_q8 *, size_t, float);
ft_status ft_fedavg_acc_f32_avx2(float *, const float *, size_t, float);
ft_status ft_fedavg_apply_f32_avx2(float *, float *, size_t, float);
extern const ft_kernel_table ft_kernels_avx512;
#endif
#if FT_ARCH_ARM64
extern const ft_kernel_table ft_kernels_neon;
#endif
extern const ft_kernel_table ft_kernels_ref;

/* ==== training engine dispatch (csrc/train_kernels_ref.c) ====
 * Kept apart from ft_kernel_table so the codec table stays as it is; chosen with ft_simd_get(). */
typedef ft_status (*ft_gemm_fn)(size_t, size_t, size_t, const float *, ptrdiff_t, ptrdiff_t, const float *,
                                 size_t, float *, size_t, int);
typedef void (*ft_sgd_fn)(float *, const float *, float *, const float *, size_t, float, float, float, float);
typedef void (*ft_transpose_fn)(const float *, size_t, size_t, float *);
typedef void (*ft_muladd_fn)(float *, const float *, const float *, size_t);
typedef struct {
    ft_gemm_fn gemm_f32;
    ft_sgd_fn sgd_f32;             /* the SGD update of n parameters, see FT_SGD_BODY */
    ft_transpose_fn transpose_f32; /* dst[c][r] = src[r][c] for an R x C matrix */
    ft_muladd_fn muladd_f32;       /* y[i] += a[i] * b[i] (depthwise conv), see FT_MULADD_BODY */
} ft_train_kernel_table;
const ft_train_kernel_table *ft_train_kernels(void);

/* The SGD update, the one definition every path instantiates (under its target attribute the
 * compiler vectorizes it; -ffp-contract=off keeps every path bit-identical to the reference):
 *   g' = g + wd*w + mu*(w - wg)    (terms present only when wd > 0 / wg != NULL)
 *   v  = m*v + g'; w -= lr*v       (v == NULL: w -= lr*g')
 * The cases are separate loops so each is a straight vectorizable loop. */
#define FT_SGD_BODY(w, g, v, wg, n, lr, m, wd, mu)                                                   \
    do {                                                                                             \
        if (!(v) && !(wg) && (wd) == 0.0f) {                                                         \
            for (size_t i_ = 0; i_ < (n); i_++) (w)[i_] -= (lr) * (g)[i_];                           \
        } else if (!(v) && !(wg)) {                                                                  \
            for (size_t i_ = 0; i_ < (n); i_++) (w)[i_] -= (lr) * ((g)[i_] + (wd) * (w)[i_]);        \
        } else if (!(v)) {                                                                           \
            for (size_t i_ = 0; i_ < (n); i_++)                                                      \
                (w)[i_] -= (lr) * (((g)[i_] + (wd) * (w)[i_]) + (mu) * ((w)[i_] - (wg)[i_]));        \
        } else if (!(wg)) {                                                                          \
            for (size_t i_ = 0; i_ < (n); i_++) {                                                    \
                (v)[i_] = (m) * (v)[i_] + ((g)[i_] + (wd) * (w)[i_]);                                \
                (w)[i_] -= (lr) * (v)[i_];                                                           \
            }                                                                                        \
        } else {                                                                                     \
            for (size_t i_ = 0; i_ < (n); i_++) {                                                    \
                (v)[i_] = (m) * (v)[i_] + (((g)[i_] + (wd) * (w)[i_]) + (mu) * ((w)[i_] - (wg)[i_])); \
                (w)[i_] -= (lr) * (v)[i_];                                                           \
            }                                                                                        \
        }                                                                                            \
    } while (0)

/* y += a * b elementwise: a multiply then an add (no FMA: -ffp-contract=off), so every path that
 * instantiates it under its target attribute is bit-identical to the reference. The channel loop
 * of the depthwise convolution's forward, weight-gradient and input-gradient passes. */
#define FT_MULADD_BODY(y, a, b, n)                                           \
    do {                                                                     \
        for (size_t i_ = 0; i_ < (n); i_++) (y)[i_] += (a)[i_] * (b)[i_];    \
    } while (0)

ft_status ft_gemm_f32_ref(size_t, size_t, size_t, const float *, ptrdiff_t, ptrdiff_t, const float *, size_t,
                          float *, size_t, int);
void ft_muladd_f32_ref(float *, const float *, const float *, size_t);
void ft_sgd_f32_ref(float *, const float *, float *, const float *, size_t, float, float, float, float);
void ft_transpose_f32_ref(const float *, size_t, size_t, float *);
#if FT_ARCH_X86
extern const ft_train_kernel_table ft_train_kernels_avx2, ft_train_kernels_avx512;
ft_status ft_gemm_f32_avx2(size_t, size_t, size_t, const float *, ptrdiff_t, ptrdiff_t, const float *, size_t,
                           float *, size_t, int);
ft_status ft_gemm_f32_avx512(size_t, size_t, size_t, const float *, ptrdiff_t, ptrdiff_t, const float *, size_t,
                             float *, size_t, int);
void ft_transpose_f32_avx2(const float *, size_t, size_t, float *);
#endif
#if FT_ARCH_ARM64 || FT_ARCH_ARM32
extern const ft_train_kernel_table ft_train_kernels_neon;
ft_status ft_gemm_f32_neon(size_t, size_t, size_t, const float *, ptrdiff_t, ptrdiff_t, const float *, size_t,
                           float *, size_t, int);
#endif

/* ==== secure-aggregation dispatch (csrc/secagg.c) ====
 * The ChaCha20 block generator is where the time goes; the arithmetic around it is a few integer
 * operations per element and stays in the one generic body. Chosen with ft_simd_get(). */
typedef void (*ft_chacha20_blocks_fn)(const uint32_t state[16], size_t nblocks, uint8_t *out);
typedef double (*ft_l2sq_fn)(const float *x, size_t n);
typedef void (*ft_add_mod_u32_fn)(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask);
typedef void (*ft_decode_mod_u32_fn)(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out);
typedef struct {
    /* nblocks * 64 keystream bytes of blocks state[12], state[12] + 1, ... (no wrap: caller checks) */
    ft_chacha20_blocks_fn chacha20_blocks;
    /* sum of squares in the 16-lane order of ft_l2norm_f32 */
    ft_l2sq_fn l2sq_f32;
    /* acc[i] = (acc[i] + x[i]) & mask, mask = 2^b - 1 */
    ft_add_mod_u32_fn add_mod_u32;
    /* out[i] = (float)((double)c * scale), c = (int32)(sum[i] << shift) / 2^shift, shift = 32 - b */
    ft_decode_mod_u32_fn decode_mod_u32;
} ft_secagg_kernel_table;
const ft_secagg_kernel_table *ft_secagg_kernels(void);
void ft_chacha20_blocks_ref(const uint32_t state[16], size_t nblocks, uint8_t *out);
double ft_l2sq_f32_ref(const float *x, size_t n);
void ft_add_mod_u32_body_ref(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask);
void ft_decode_mod_u32_body_ref(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out);
#if FT_ARCH_X86
void ft_chacha20_blocks_avx2(const uint32_t state[16], size_t nblocks, uint8_t *out);
void ft_chacha20_blocks_avx512(const uint32_t state[16], size_t nblocks, uint8_t *out);
double ft_l2sq_f32_avx2(const float *x, size_t n);
double ft_l2sq_f32_avx512(const float *x, size_t n);
void ft_add_mod_u32_avx2(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask);
void ft_add_mod_u32_avx512(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask);
void ft_decode_mod_u32_avx2(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out);
void ft_decode_mod_u32_avx512(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out);
#endif
/* The centered value of the top (32 - shift) bits of u, exactly, without implementation-defined
 * conversions or shifts of negative numbers: the SIMD paths' arithmetic shift, in portable C. */
static inline int64_t ft_centered_u32(uint32_t u, unsigned shift) {
    const uint32_t t = u << shift;
    return ((int64_t)(t ^ 0x80000000u) - (int64_t)0x80000000) / ((int64_t)1 << shift);
}
#if FT_ARCH_ARM64
void ft_chacha20_blocks_neon(const uint32_t state[16], size_t nblocks, uint8_t *out);
#endif

/* ==== sub-byte codecs (csrc/codec_lowbit_body.h, the one definition) ====
 * Each path compiles the body under its target attribute with its own FWHT; chosen with
 * ft_simd_get(). The decode/accumulate of a path without its own version is the reference's. */
typedef void (*ft_fwht_fn)(float *, size_t);
typedef ft_status (*ft_lowbit_quantize_fn)(ft_lowbit_fmt, const float *, size_t, float *, ft_rounding, uint64_t,
                                           uint8_t *);
typedef ft_status (*ft_lowbit_apply_fn)(ft_lowbit_fmt, const uint8_t *, size_t, size_t, uint64_t, float, float *, int);
/* acc[i] (+)= weight * value i over n values whose first is parameter i0; add = 0: write (weight 1) */
ft_status ft_lowbit_apply_ref(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n, uint64_t seed, float weight,
                              float *acc, int add);
#if FT_ARCH_X86
void ft_fwht_f32_avx2(float *v, size_t len);
void ft_fwht_f32_avx512(float *v, size_t len);
ft_status ft_quantize_lowbit_avx2(ft_lowbit_fmt, const float *, size_t, float *, ft_rounding, uint64_t, uint8_t *);
ft_status ft_quantize_lowbit_avx512(ft_lowbit_fmt, const float *, size_t, float *, ft_rounding, uint64_t, uint8_t *);
ft_status ft_lowbit_apply_avx2(ft_lowbit_fmt, const uint8_t *, size_t, size_t, uint64_t, float, float *, int);
ft_status ft_lowbit_apply_avx512(ft_lowbit_fmt, const uint8_t *, size_t, size_t, uint64_t, float, float *, int);
#endif
#if FT_ARCH_ARM64
void ft_fwht_f32_neon(float *v, size_t len);
ft_status ft_quantize_lowbit_neon(ft_lowbit_fmt, const float *, size_t, float *, ft_rounding, uint64_t, uint8_t *);
#endif

#endif
