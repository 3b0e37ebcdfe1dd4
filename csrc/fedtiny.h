/*
 * fedtiny.h — the one public header of the fedtiny C kernels.
 *
 * Conventions (CMSIS-NN style):
 *   - every public function returns ft_status (0 ok, negative error);
 *   - the caller owns every buffer; no kernel allocates;
 *   - [in] / [out] / [in,out] mark the direction of each pointer;
 *   - each kernel has a plain scalar `_ref` version (the spec) and SIMD versions in
 *     csrc/arch/, chosen at run time by csrc/dispatch.c.
 *
 * Compile-time layout (fixed, little-endian, what goes on the wire; see docs/PROTOCOL.md):
 *   FT_QK            parameters per int8 block (128)
 *   ft_block_q8      { float32 d; int8 qs[FT_QK]; }  = 132 bytes, value_i = d * qs[i]
 */
#ifndef FEDTINY_H
#define FEDTINY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FT_QK 128
/* A block whose largest |value| is below this is sent as all zeros with d = 0:
 * it keeps 1/d finite (d would be subnormal) and such values are far below float32 training noise. */
#define FT_Q8_MIN_AMAX 1e-30f

typedef struct {
    float d;            /* scale, little-endian IEEE-754 binary32 on the wire */
    int8_t qs[FT_QK];   /* quantized values in [-127, 127] */
} ft_block_q8;

#if defined(__cplusplus)
static_assert(sizeof(ft_block_q8) == 4 + FT_QK, "ft_block_q8 must be packed: 4-byte scale + FT_QK int8");
#else
_Static_assert(sizeof(ft_block_q8) == 4 + FT_QK, "ft_block_q8 must be packed: 4-byte scale + FT_QK int8");
#endif

typedef enum {
    FT_OK = 0,
    FT_ERR_ARG = -1,        /* a pointer is NULL or a size is out of range */
    FT_ERR_NONFINITE = -2,  /* the input holds NaN or Inf */
    FT_ERR_SIMD = -3,       /* the requested SIMD path is not supported by this CPU/build */
} ft_status;

typedef enum {
    FT_ROUND_NEAREST = 0,    /* round half to even */
    FT_ROUND_STOCHASTIC = 1, /* floor(v + u), u ~ U[0,1) from ft_rng_u01: unbiased */
} ft_rounding;

typedef enum {
    FT_SIMD_SCALAR = 0,
    FT_SIMD_AVX2 = 1,
    FT_SIMD_AVX512 = 2,
    FT_SIMD_NEON = 3,
    FT_SIMD_COUNT = 4
} ft_simd;

/* ---- run-time dispatch ------------------------------------------------------------ */

/* Best path this CPU and build support. */
ft_simd ft_simd_best(void);
/* 1 if `level` can run here. */
int ft_simd_supported(ft_simd level);
/* Select the path used by every kernel below; FT_ERR_SIMD if unsupported. Not thread-safe:
 * call before kernels run (the Python module calls it once at import). */
ft_status ft_simd_set(ft_simd level);
ft_simd ft_simd_get(void);
const char *ft_simd_name(ft_simd level);

/* ---- stochastic-rounding generator -------------------------------------------------- */

/* Counter-based: the uniform for parameter i depends only on (seed, i), so every path and
 * platform produces the same bytes. key = ft_rng_key(seed); u_i = (h(i, key) >> 8) * 2^-24. */
uint32_t ft_rng_key(uint64_t seed);

/* ---- int8 block codec --------------------------------------------------------------- */

static inline size_t ft_q8_nblocks(size_t n) { return (n + FT_QK - 1) / FT_QK; }

/* Quantize x[0..n) into ft_q8_nblocks(n) blocks; the last block is zero-padded.
 *   x        [in]     n float32 values, finite
 *   residual [in,out] NULL, or n float32: error feedback. v = x + residual is quantized and
 *                     residual := v - decode(q) in the same pass.
 *   rounding [in]     ft_rounding
 *   seed     [in]     used when rounding == FT_ROUND_STOCHASTIC
 *   out      [out]    ft_q8_nblocks(n) blocks
 * Returns FT_ERR_NONFINITE if any x (or x + residual) is NaN/Inf; `out` and `residual` are
 * then unspecified (the Python layer passes a copy of the residual only when it must). */
ft_status ft_quantize_q8(const float *x, size_t n, float *residual, ft_rounding rounding,
                         uint64_t seed, ft_block_q8 *out);

/* out[i] = d * q[i] for i < n. */
ft_status ft_dequantize_q8(const ft_block_q8 *in, size_t n, float *out);

/* ---- in-place FedAvg ---------------------------------------------------------------- */

/* acc[i] += (weight * d_b) * q[i] for the n values held by `in` (dequantize-and-add in one
 * pass; no float32 copy of the update exists). */
ft_status ft_fedavg_acc_q8(float *acc, const ft_block_q8 *in, size_t n, float weight);
/* acc[i] += weight * x[i]. */
ft_status ft_fedavg_acc_f32(float *acc, const float *x, size_t n, float weight);
/* w[i] += acc[i] * scale; acc[i] = 0 (scale = 1 / total weight). */
ft_status ft_fedavg_apply_f32(float *w, float *acc, size_t n, float scale);

/* ---- scalar references (the spec; always compiled; tests call them directly) -------- */

ft_status ft_quantize_q8_ref(const float *x, size_t n, float *residual, ft_rounding rounding,
                             uint64_t seed, ft_block_q8 *out);
ft_status ft_dequantize_q8_ref(const ft_block_q8 *in, size_t n, float *out);
ft_status ft_fedavg_acc_q8_ref(float *acc, const ft_block_q8 *in, size_t n, float weight);
ft_status ft_fedavg_acc_f32_ref(float *acc, const float *x, size_t n, float weight);
ft_status ft_fedavg_apply_f32_ref(float *w, float *acc, size_t n, float scale);

#ifdef __cplusplus
}
#endif

#endif /* FEDTINY_H */
