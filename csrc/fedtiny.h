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
    FT_ERR_RNG = -4,        /* the caller's random byte source failed */
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

/* ---- exact discrete Gaussian (differential privacy; csrc/dgauss.c) -------------------- */

/* The caller's cryptographic byte source: fill out[0..n) and return 0, or nonzero on failure. */
typedef int (*ft_random_bytes_fn)(void *ctx, uint8_t *out, size_t n);

#define FT_DGAUSS_MAX_NUM (UINT64_C(1) << 40) /* sigma^2 = num / den <= 2^40 (sigma <= 2^20) */
#define FT_DGAUSS_MAX_DEN (UINT64_C(1) << 24)

/* n independent draws of the discrete Gaussian N_Z(0, sigma^2), P(x) ~ exp(-x^2 / (2 sigma^2))
 * over the integers, sigma^2 = sigma2_num / sigma2_den exactly (Canonne, Kamath, Steinke 2020):
 * integer arithmetic only, randomness only from random_bytes(ctx, ...).
 *   out          [out] n int64
 *   sigma2_num   [in]  1 .. FT_DGAUSS_MAX_NUM
 *   sigma2_den   [in]  1 .. FT_DGAUSS_MAX_DEN
 * FT_ERR_ARG for a parameter out of range, FT_ERR_RNG if the byte source failed (out is then
 * partly written and must not be used). */
ft_status ft_dgauss_s64(int64_t *out, size_t n, uint64_t sigma2_num, uint64_t sigma2_den,
                        ft_random_bytes_fn random_bytes, void *ctx);

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

/* ---- update norm (the first stage of clipping; csrc/norm_ref.c) --------------------- */

/* *out = sum over the n values held by `in` of (d_b * q_i)^2, in float64: the squared L2 norm
 * of the decoded update, read from the blocks without decoding them. Blocks are added in order,
 * so every SIMD path gives the same bits. Finite for any blocks whose scales are finite.
 *   in  [in]  ft_q8_nblocks(n) blocks;  n [in] values, < 2^32;  out [out] the sum. */
ft_status ft_sumsq_q8(const ft_block_q8 *in, size_t n, double *out);
/* *out = sum of x_i^2 for i < n, sequential in float64 (scalar on every path). */
ft_status ft_sumsq_f32(const float *x, size_t n, double *out);

/* ---- sub-byte update codecs (csrc/codec_lowbit_ref.c; docs/PROTOCOL.md "Sub-byte updates") ---- */

#define FT_RK 512 /* values per block of the rotated 1-bit codec (a power of two: the FWHT size) */

typedef enum {
    FT_FMT_R1 = 1, /* 1 bit per value after a seeded random rotation, one scale per FT_RK values */
    FT_FMT_Q2 = 2, /* 2-bit codes, q in {-1, 0, 1}, one scale per FT_QK values */
    FT_FMT_Q4 = 4, /* 4-bit codes, q in [-7, 7], one scale per FT_QK values */
} ft_lowbit_fmt;

typedef struct { float d; uint8_t qs[FT_QK / 2]; } ft_block_q4;   /* 68 bytes  */
typedef struct { float d; uint8_t qs[FT_QK / 4]; } ft_block_q2;   /* 36 bytes  */
typedef struct { float s; uint8_t bits[FT_RK / 8]; } ft_block_r1; /* 68 bytes  */
#if defined(__cplusplus)
static_assert(sizeof(ft_block_q4) == 4 + FT_QK / 2 && sizeof(ft_block_q2) == 4 + FT_QK / 4 &&
              sizeof(ft_block_r1) == 4 + FT_RK / 8, "sub-byte blocks must be packed");
#else
_Static_assert(sizeof(ft_block_q4) == 4 + FT_QK / 2 && sizeof(ft_block_q2) == 4 + FT_QK / 4 &&
               sizeof(ft_block_r1) == 4 + FT_RK / 8, "sub-byte blocks must be packed");
#endif

/* Values per block and bytes per block of a format (0 for an unknown format). */
size_t ft_lowbit_block_values(ft_lowbit_fmt fmt);
size_t ft_lowbit_block_bytes(ft_lowbit_fmt fmt);
static inline size_t ft_lowbit_nblocks(ft_lowbit_fmt fmt, size_t n) {
    const size_t bv = ft_lowbit_block_values(fmt);
    return (n + bv - 1) / bv;
}

/* Quantize x[0..n) into ft_lowbit_nblocks(fmt, n) blocks at `out` (byte buffer, any alignment).
 *   residual [in,out] NULL or n float32: error feedback, as ft_quantize_q8
 *   rounding [in]     q4/q2: nearest or stochastic (unbiased); r1: ignored (deterministic sign)
 *   seed     [in]     the stochastic-rounding stream (q4/q2) or the rotation's signs (r1)
 * FT_ERR_NONFINITE if any value is NaN/Inf. n < 2^32. */
ft_status ft_quantize_lowbit(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual, ft_rounding rounding,
                             uint64_t seed, uint8_t *out);
/* out[i] = value i for i < n; `seed` is the encoder's (r1 needs it to undo the rotation). */
ft_status ft_dequantize_lowbit(ft_lowbit_fmt fmt, const uint8_t *in, size_t n, uint64_t seed, float *out);
/* acc[i] += weight * value i, for the n values of blocks whose first value is parameter i0
 * (a multiple of the block's value count: a chunk of an update). One pass, no float copy. */
ft_status ft_fedavg_acc_lowbit(ft_lowbit_fmt fmt, float *acc, const uint8_t *in, size_t i0, size_t n,
                               uint64_t seed, float weight);
/* In-place unnormalized fast Walsh-Hadamard transform of len (a power of two, <= FT_RK) floats,
 * the stages h = 1, 2, 4, ... each a + b, a - b: every path computes the same bits. */
ft_status ft_fwht_f32(float *v, size_t len);

/* ---- scalar references (the spec; always compiled; tests call them directly) -------- */

ft_status ft_quantize_q8_ref(const float *x, size_t n, float *residual, ft_rounding rounding,
                             uint64_t seed, ft_block_q8 *out);
ft_status ft_dequantize_q8_ref(const ft_block_q8 *in, size_t n, float *out);
ft_status ft_fedavg_acc_q8_ref(float *acc, const ft_block_q8 *in, size_t n, float weight);
ft_status ft_fedavg_acc_f32_ref(float *acc, const float *x, size_t n, float weight);
ft_status ft_fedavg_apply_f32_ref(float *w, float *acc, size_t n, float scale);
ft_status ft_sumsq_q8_ref(const ft_block_q8 *in, size_t n, double *out);
ft_status ft_sumsq_f32_ref(const float *x, size_t n, double *out);
ft_status ft_quantize_lowbit_ref(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual, ft_rounding rounding,
                                 uint64_t seed, uint8_t *out);
void ft_fwht_f32_ref(float *v, size_t len);


/* ==== on-device training engine (csrc/train_net.c, csrc/gemm_ref.c, csrc/arch/..._gemm.c) ====
 *
 * A model is an array of ft_layer descriptors built by fedtiny/model.py. Activations are NHWC
 * float32. Parameters, as callers see them (the "interchange layout", what the codec and FedAvg
 * see): layers in order, each layer's weight then bias; Dense W[out][in], Conv2D W[oc][kh][kw][ic],
 * Depthwise W[c][kh][kw] (training layout [kh*kw][c], TFLite's [1][kh][kw][c]).
 * During training the weights live in the arena in the "training layout": every weight tensor
 * transposed to [fan_in][fan_out] (Dense Wt[in][out], Conv2D Wt[kh*kw*ic][oc]), so the forward
 * GEMM and the weight-gradient GEMM read it with unit stride; ft_train_load / ft_train_store
 * convert once per local_sgd call.
 *
 * Every activation, gradient and scratch buffer comes from ONE caller-owned arena of
 * ft_train_arena_floats() floats, laid out by the same function; nothing is allocated per step. */

#define FT_MAX_LAYERS 32

typedef enum {
    FT_LAYER_DENSE = 1,   /* in_c = fan in (in_h = in_w = 1), out_c = fan out */
    FT_LAYER_CONV2D = 2,  /* k x kw, stride, VALID or SAME (a 1-D conv is in_h = k = 1) */
    FT_LAYER_MAXPOOL2 = 3,/* 2x2 stride 2: out_h = in_h / 2 (floor) */
    FT_LAYER_RELU = 4,    /* in place on its input buffer */
    FT_LAYER_FLATTEN = 5, /* NHWC is already flat in (h, w, c) order: a no-op */
    FT_LAYER_DEPTHWISE = 6, /* depthwise k x kw, multiplier 1 (out_c = in_c), stride, VALID or SAME */
    FT_LAYER_AVGPOOL = 7, /* k x kw window, stride, VALID: the mean of the window */
    FT_LAYER_MAXPOOL = 8, /* k x kw window, stride, VALID: gradient to the first maximum (row-major) */
    FT_LAYER_GAP = 9,     /* global average pooling: out 1 x 1 x in_c */
    FT_LAYER_RELU6 = 10,  /* min(max(x, 0), 6), in place */
} ft_layer_kind;

/* One layer; 14 int64 so Python builds an (L, 14) int64 array that is read in place.
 * Window layers (CONV2D, DEPTHWISE, AVGPOOL, MAXPOOL) set k (height), kw (width), the strides
 * (>= 1) and `same`; every other kind leaves those four at 0. SAME is TensorFlow's: out = ceil(in /
 * stride), the padding max((out - 1) * stride + k - in, 0) split with the smaller half first (top,
 * left); VALID: out = (in - k) / stride + 1. Padding reads as zeros. */
typedef struct {
    int64_t kind;
    int64_t in_h, in_w, in_c;
    int64_t out_h, out_w, out_c;
    int64_t k;            /* window height (CONV2D: the kernel size), else 0 */
    int64_t w_off, b_off; /* offsets of weight and bias in the parameter vector, -1 if none */
    int64_t kw;           /* window width */
    int64_t stride_h, stride_w;
    int64_t same;         /* 1: SAME padding, 0: VALID */
} ft_layer;

/* Arena options (bit flags). */
#define FT_TRAIN_MOMENTUM 1u /* keep a velocity vector (n_params floats) */
#define FT_TRAIN_PROX 2u     /* keep the global weights (n_params floats) for FedProx */
#define FT_TRAIN_INT8 4u     /* weights as int8 blocks (per tensor, FT_QK values per scale) */
#define FT_NET_INFER 8u      /* forward only (ft_net_forward): no gradient buffers, 2 activation buffers */
#define FT_LOSS_MSE 16u      /* mean squared error against one-hot labels instead of softmax cross-entropy */

typedef struct {
    const ft_layer *layers;
    int32_t n_layers;
    int64_t n_params;
    int32_t batch;   /* largest batch the arena serves */
    uint32_t flags;  /* FT_TRAIN_* */
} ft_net;

typedef struct {
    float lr, momentum, weight_decay, prox_mu;
    uint64_t seed;   /* stochastic rounding of int8 weight updates */
    uint64_t step0;  /* global step number of the first step (keys the rounding per step) */
} ft_sgd_hyper;

/* FT_OK if the layer chain is consistent (shapes chain, offsets tile [0, n_params)). */
ft_status ft_net_check(const ft_net *net);
/* Floats of arena the net needs (0 if net is invalid). */
size_t ft_train_arena_floats(const ft_net *net);
/* Interchange params (and, with FT_TRAIN_PROX, the global params) into the arena's training
 * layout; with FT_TRAIN_INT8 weights are quantized (round to nearest); velocity := 0. */
ft_status ft_train_load(const ft_net *net, const float *params, const float *global_params, float *arena);
/* Training layout (dequantized with FT_TRAIN_INT8) back to interchange params. */
ft_status ft_train_store(const ft_net *net, const float *arena, float *params);
/* The same, but params := trained - params: params must still hold the weights ft_train_load
 * read (the update of a local_sgd call, in place, without a copy of the initial weights). */
ft_status ft_train_store_delta(const ft_net *net, const float *arena, float *params);
/* SGD over samples idx[0..n_idx) of x (n_x rows of prod(input) floats) / y (int32 labels), in
 * batches of net->batch (the last may be smaller), at most max_steps steps (<0: no cap).
 *   loss_sum [out] sum of per-sample losses seen; n_seen [out] samples used; steps [out].
 * FT_ERR_NONFINITE if the loss becomes NaN/Inf (training diverged). */
ft_status ft_train_sgd(const ft_net *net, const ft_sgd_hyper *hyper, const float *x, const int32_t *y,
                       int64_t n_x, const int32_t *idx, int64_t n_idx, int64_t max_steps, float *arena,
                       double *loss_sum, int64_t *n_seen, int64_t *steps);
/* ft_train_sgd on uint8 rows (a data set kept in flash at a quarter of its float size): each
 * value enters the batch buffer as (float)x[i] * x_scale, so the result is bit-identical to
 * ft_train_sgd on the float32 array x * x_scale. x_scale > 0 and finite. */
ft_status ft_train_sgd_u8(const ft_net *net, const ft_sgd_hyper *hyper, const uint8_t *x, float x_scale,
                          const int32_t *y, int64_t n_x, const int32_t *idx, int64_t n_idx, int64_t max_steps,
                          float *arena, double *loss_sum, int64_t *n_seen, int64_t *steps);
/* Gradient of the mean loss over x[0..n) (n <= batch, no regularizer) in the interchange layout
 * (float32 arena only: for tests). */
ft_status ft_train_grad(const ft_net *net, const float *x, const int32_t *y, int32_t n, float *arena,
                        float *grad, double *loss_sum);
/* Logits of x[0..n) (n <= batch) with the weights loaded in the arena. */
ft_status ft_net_forward(const ft_net *net, const float *x, int32_t n, float *arena, float *logits);

/* Deterministic randomness from the codec's counter-based generator (ft_rng_u01), so a board
 * without numpy draws the same numbers:
 *   ft_uniform_f32   out[i] = lo + (hi - lo) * u(counter0 + i), u from key ft_rng_key(seed);
 *   ft_shuffle_i32   out := a permutation of 0..n-1 (Fisher-Yates, j = floor(u32 * (i+1) / 2^32)),
 *                    key ft_rng_key(seed ^ mix(stream)) so each epoch (stream) has its own order. */
ft_status ft_uniform_f32(float *out, size_t n, float lo, float hi, uint64_t seed, uint32_t counter0);
ft_status ft_shuffle_i32(int32_t *out, size_t n, uint64_t seed, uint64_t stream);

/* C[M][N] (accumulate ? += : =) A * B, the engine's one GEMM.
 *   A(i,k) = A[i*rsa + k*csa] (any strides: plain or transposed);
 *   B row-major K x N with row stride ldb (unit stride along N); C row-major, row stride ldc. */
ft_status ft_gemm_f32(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                      const float *B, size_t ldb, float *C, size_t ldc, int accumulate);
ft_status ft_gemm_f32_ref(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                          const float *B, size_t ldb, float *C, size_t ldc, int accumulate);

/* ==== secure aggregation (SecAgg+, docs/secagg.md; csrc/secagg.c, csrc/arch/x86_*_secagg.c) ====
 *
 * The device maps its clipped update onto the round's integer grid and adds its masks modulo
 * 2^b in one pass; the aggregator adds masked vectors modulo 2^b, removes the masks it can
 * reconstruct, and turns the integer sum back into float32. b = 16 (uint16_t vectors) or
 * b = 32 (uint32_t vectors): the width of the vector type is the modulus.
 *
 * Streams. Every pseudo-random word comes from ChaCha20 (RFC 8439; firmware_bridge/ft_chacha20.c,
 * the scalar reference of the SIMD generators) with a 32-byte key, a fixed 12-byte nonce that
 * separates the uses, and the block counter starting at 0. Word i of a stream of w-byte words is
 * the little-endian integer in keystream bytes [w*i, w*i + w):
 *   mask of a seed, b = 16:  nonce FT_SECAGG_MASK_NONCE, w = 2 (uint16)
 *   mask of a seed, b = 32:  nonce FT_SECAGG_MASK_NONCE, w = 4 (uint32)
 *   stochastic rounding:     nonce FT_SECAGG_ROUND_NONCE, w = 4 (uint32), keyed by the caller
 * Element i of a vector uses word (offset + i), so a vector can be processed in chunks.
 * A stream holds at most 2^32 blocks: offset + n <= FT_SECAGG_MAX_WORDS(w).
 *
 * Grid (ft_secagg_encode_*), for element i, all float32 arithmetic:
 *   m  = scale / step                      (scale: the clip factor, min(1, C / ||x||))
 *   t  = min(max(x[i] * m, -qmax), qmax)
 *   fl = floor(t);  frac = t - fl          (both exact)
 *   u  = (float)(r_i >> 8) * 2^-24          (r_i: word offset+i of the rounding stream)
 *   q  = fl + (u < frac ? 1 : 0)           (E[q] = t up to 2^-24: unbiased stochastic rounding)
 *   out[i] = (q + sum_j sign_j * mask_j[offset + i]) mod 2^b
 * qmax (1 .. min(2^(b-1) - 1, 2^24)) bounds one device's integers; the protocol picks step and
 * qmax so that the sum of all devices cannot wrap (docs/secagg.md "Grid").
 *
 * Masks are passed as n_masks seeds of FT_SECAGG_SEED_BYTES bytes, back to back, and n_masks
 * signs (+1: add the stream, -1: subtract it). */
#define FT_SECAGG_SEED_BYTES 32
#define FT_SECAGG_MASK_NONCE "fedtiny-mask"  /* 12 ASCII bytes, no terminator used */
#define FT_SECAGG_ROUND_NONCE "fedtiny-srnd" /* 12 ASCII bytes, no terminator used */
#define FT_SECAGG_MAX_QMAX (1u << 24)
/* Largest offset + n a stream of w-byte words covers (2^32 blocks of 64 bytes). */
#define FT_SECAGG_MAX_WORDS(w) ((((uint64_t)1) << 38) / (uint64_t)(w))

/* *norm = sqrt(sum x[i]^2), squares exact in float64, summed in 16 lanes (lane i % 16) that are
 * then added pairwise (lane j += lane j+8, j+4, j+2, j+1): every path gives the same bits.
 * FT_ERR_NONFINITE if x holds NaN or Inf. */
ft_status ft_l2norm_f32(const float *x, size_t n, double *norm);

/* The device's one pass (see "Grid" above).
 *   x         [in]  n float32, finite (else FT_ERR_NONFINITE; out is then unspecified)
 *   offset    [in]  index of x[0] in the whole vector (stream position)
 *   scale     [in]  clip factor, finite, >= 0
 *   step      [in]  grid step, finite, > 0; scale / step must be finite
 *   qmax      [in]  1 .. min(2^(b-1) - 1, FT_SECAGG_MAX_QMAX)
 *   round_key [in]  32 bytes keying the rounding stream (os.urandom in production)
 *   seeds     [in]  n_masks * 32 bytes (NULL if n_masks == 0); signs [in] n_masks of +1/-1
 *   out       [out] n masked integers */
ft_status ft_secagg_encode_u16(const float *x, size_t n, size_t offset, float scale, float step, uint32_t qmax,
                               const uint8_t *round_key, const uint8_t *seeds, const int8_t *signs,
                               size_t n_masks, uint16_t *out);
ft_status ft_secagg_encode_u32(const float *x, size_t n, size_t offset, float scale, float step, uint32_t qmax,
                               const uint8_t *round_key, const uint8_t *seeds, const int8_t *signs,
                               size_t n_masks, uint32_t *out);
/* acc[i] = acc[i] + x[i] mod 2^b (the aggregator's sum of masked vectors), b = the element width. */
ft_status ft_secagg_add_u16(uint16_t *acc, const uint16_t *x, size_t n);
ft_status ft_secagg_add_u32(uint32_t *acc, const uint32_t *x, size_t n);
/* acc[i] = (acc[i] + x[i]) mod 2^bits for any modulus 2^bits, bits in 2..16 (u16 elements) or 2..32
 * (u32): the result is always < 2^bits, whatever bits of acc and x lie above it (the distributed
 * discrete Gaussian's sum, csrc/dgauss.c, picks b from the clip, devices and noise). FT_ERR_ARG for
 * another bits. The u32 one has SIMD paths (selected at run time, bit-exact with the _ref). */
ft_status ft_secagg_add_mod_u16(uint16_t *acc, const uint16_t *x, size_t n, unsigned bits);
ft_status ft_secagg_add_mod_u32(uint32_t *acc, const uint32_t *x, size_t n, unsigned bits);
ft_status ft_secagg_add_mod_u32_ref(uint32_t *acc, const uint32_t *x, size_t n, unsigned bits);
/* v[i] = v[i] + sum_j sign_j * mask_j[offset + i] mod 2^b: adds (+1) or removes (-1) masks in place. */
ft_status ft_secagg_mask_u16(uint16_t *v, size_t n, size_t offset, const uint8_t *seeds, const int8_t *signs,
                             size_t n_masks);
ft_status ft_secagg_mask_u32(uint32_t *v, size_t n, size_t offset, const uint8_t *seeds, const int8_t *signs,
                             size_t n_masks);
/* out[i] = (float)(c * scale) in float64, c = sum[i] read as a centered integer (values >= 2^(b-1)
 * are sum[i] - 2^b). scale = step / (number of devices summed) gives the mean update. */
ft_status ft_secagg_decode_u16(const uint16_t *sum, size_t n, double scale, float *out);
ft_status ft_secagg_decode_u32(const uint32_t *sum, size_t n, double scale, float *out);
/* The same for any modulus 2^bits (bits as in ft_secagg_add_mod_*): c = (sum[i] mod 2^bits) read as a
 * centered integer in [-2^(bits-1), 2^(bits-1)), out[i] = (float)(c * scale) in float64. */
ft_status ft_secagg_decode_mod_u16(const uint16_t *sum, size_t n, unsigned bits, double scale, float *out);
ft_status ft_secagg_decode_mod_u32(const uint32_t *sum, size_t n, unsigned bits, double scale, float *out);
ft_status ft_secagg_decode_mod_u32_ref(const uint32_t *sum, size_t n, unsigned bits, double scale, float *out);
/* nblocks * 64 keystream bytes of blocks counter0, counter0 + 1, ... (counter0 + nblocks <= 2^32),
 * with the selected SIMD path (the secagg kernels' generator; exposed for tests and benchmarks). */
ft_status ft_chacha20_stream(const uint8_t *key, const uint8_t *nonce, uint32_t counter0, size_t nblocks,
                             uint8_t *out);

ft_status ft_l2norm_f32_ref(const float *x, size_t n, double *norm);
ft_status ft_secagg_encode_u16_ref(const float *x, size_t n, size_t offset, float scale, float step, uint32_t qmax,
                                   const uint8_t *round_key, const uint8_t *seeds, const int8_t *signs,
                                   size_t n_masks, uint16_t *out);
ft_status ft_secagg_encode_u32_ref(const float *x, size_t n, size_t offset, float scale, float step, uint32_t qmax,
                                   const uint8_t *round_key, const uint8_t *seeds, const int8_t *signs,
                                   size_t n_masks, uint32_t *out);
ft_status ft_secagg_mask_u16_ref(uint16_t *v, size_t n, size_t offset, const uint8_t *seeds, const int8_t *signs,
                                 size_t n_masks);
ft_status ft_secagg_mask_u32_ref(uint32_t *v, size_t n, size_t offset, const uint8_t *seeds, const int8_t *signs,
                                 size_t n_masks);
ft_status ft_chacha20_stream_ref(const uint8_t *key, const uint8_t *nonce, uint32_t counter0, size_t nblocks,
                                 uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* FEDTINY_H */
