/* dispatch.c — choose the SIMD path at run time (cpuid on x86; NEON is baseline on aarch64 and
 * read from HWCAP on 32-bit Arm), so one build runs on any CPU of its architecture. */
#include "ft_internal.h"

#if FT_ARCH_ARM32
#include <sys/auxv.h>
#ifndef HWCAP_NEON
#define HWCAP_NEON (1 << 12) /* linux/arch/arm/include/uapi/asm/hwcap.h */
#endif
#endif

static ft_simd g_level = FT_SIMD_COUNT; /* FT_SIMD_COUNT = not chosen yet: use the best */

static const char *const k_names[FT_SIMD_COUNT] = {"scalar", "avx2", "avx512", "neon"};

const char *ft_simd_name(ft_simd level) {
    return (level >= 0 && level < FT_SIMD_COUNT) ? k_names[level] : "unknown";
}

int ft_simd_supported(ft_simd level) {
    switch (level) {
    case FT_SIMD_SCALAR: return 1;
#if FT_ARCH_X86
    case FT_SIMD_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FT_SIMD_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return 1; /* Advanced SIMD is mandatory in ARMv8-A */
#endif
#if FT_ARCH_ARM32
    case FT_SIMD_NEON: return (getauxval(AT_HWCAP) & HWCAP_NEON) != 0;
#endif
    default: return 0;
    }
}

ft_simd ft_simd_best(void) {
    if (ft_simd_supported(FT_SIMD_AVX512)) return FT_SIMD_AVX512;
    if (ft_simd_supported(FT_SIMD_AVX2)) return FT_SIMD_AVX2;
    if (ft_simd_supported(FT_SIMD_NEON)) return FT_SIMD_NEON;
    return FT_SIMD_SCALAR;
}

ft_status ft_simd_set(ft_simd level) {
    if (!ft_simd_supported(level)) return FT_ERR_SIMD;
    g_level = level;
    return FT_OK;
}

ft_simd ft_simd_get(void) {
    if (g_level == FT_SIMD_COUNT) g_level = ft_simd_best();
    return g_level;
}

const ft_kernel_table *ft_kernels(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return &ft_kernels_avx2;
    case FT_SIMD_AVX512: return &ft_kernels_avx512;
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return &ft_kernels_neon;
#endif
    /* 32-bit NEON flushes subnormals to zero (ARMv7 Advanced SIMD has no IEEE mode), so the codec
     * kernels, which are bit-exact with the reference, stay scalar there; only the GEMM (checked
     * with a tolerance) has an armv7 NEON body. */
    default: return &ft_kernels_ref;
    }
}

uint32_t ft_rng_key(uint64_t seed) {
    return ft_hash32((uint32_t)seed) ^ ft_hash32((uint32_t)(seed >> 32) ^ 0x9E3779B9U);
}

/* Public entry points: argument checks once here, then the selected path. */
#define FT_CHECK(c) do { if (!(c)) return FT_ERR_ARG; } while (0)

ft_status ft_quantize_q8(const float *x, size_t n, float *residual, ft_rounding rounding,
                         uint64_t seed, ft_block_q8 *out) {
    FT_CHECK(x && out && n <= UINT32_MAX);
    FT_CHECK(rounding == FT_ROUND_NEAREST || rounding == FT_ROUND_STOCHASTIC);
    return ft_kernels()->quantize_q8(x, n, residual, rounding, seed, out);
}
ft_status ft_dequantize_q8(const ft_block_q8 *in, size_t n, float *out) {
    FT_CHECK(in && out);
    return ft_kernels()->dequantize_q8(in, n, out);
}
ft_status ft_fedavg_acc_q8(float *acc, const ft_block_q8 *in, size_t n, float weight) {
    FT_CHECK(acc && in);
    return ft_kernels()->fedavg_acc_q8(acc, in, n, weight);
}
ft_status ft_fedavg_acc_f32(float *acc, const float *x, size_t n, float weight) {
    FT_CHECK(acc && x);
    return ft_kernels()->fedavg_acc_f32(acc, x, n, weight);
}
ft_status ft_fedavg_apply_f32(float *w, float *acc, size_t n, float scale) {
    FT_CHECK(w && acc);
    return ft_kernels()->fedavg_apply_f32(w, acc, n, scale);
}

/* The norm kernel is chosen here directly rather than through ft_kernel_table, so adding it
 * did not change the codec table every path fills. */
ft_status ft_sumsq_q8(const ft_block_q8 *in, size_t n, double *out) {
    FT_CHECK(in && out && n <= UINT32_MAX);
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return ft_sumsq_q8_avx2(in, n, out);
    case FT_SIMD_AVX512: return ft_sumsq_q8_avx512(in, n, out);
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return ft_sumsq_q8_neon(in, n, out);
#endif
    default: return ft_sumsq_q8_ref(in, n, out);
    }
}
ft_status ft_sumsq_f32(const float *x, size_t n, double *out) {
    FT_CHECK(x && out);
    return ft_sumsq_f32_ref(x, n, out);
}

/* The sub-byte codecs: each path's instantiation of codec_lowbit_body.h. */
static ft_fwht_fn fwht_kernel(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return ft_fwht_f32_avx2;
    case FT_SIMD_AVX512: return ft_fwht_f32_avx512;
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return ft_fwht_f32_neon;
#endif
    default: return ft_fwht_f32_ref;
    }
}
static ft_lowbit_quantize_fn lowbit_quantize_kernel(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return ft_quantize_lowbit_avx2;
    case FT_SIMD_AVX512: return ft_quantize_lowbit_avx512;
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return ft_quantize_lowbit_neon;
#endif
    default: return ft_quantize_lowbit_ref;
    }
}
static ft_lowbit_apply_fn lowbit_apply_kernel(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return ft_lowbit_apply_avx2;
    case FT_SIMD_AVX512: return ft_lowbit_apply_avx512;
#endif
    default: return ft_lowbit_apply_ref; /* NEON: the reference (no NEON version yet) */
    }
}
static int lowbit_fmt_ok(ft_lowbit_fmt fmt) { return fmt == FT_FMT_Q4 || fmt == FT_FMT_Q2 || fmt == FT_FMT_R1; }

ft_status ft_quantize_lowbit(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual, ft_rounding rounding,
                             uint64_t seed, uint8_t *out) {
    FT_CHECK(lowbit_fmt_ok(fmt) && x && out && n <= UINT32_MAX);
    FT_CHECK(rounding == FT_ROUND_NEAREST || rounding == FT_ROUND_STOCHASTIC);
    return lowbit_quantize_kernel()(fmt, x, n, residual, rounding, seed, out);
}
ft_status ft_dequantize_lowbit(ft_lowbit_fmt fmt, const uint8_t *in, size_t n, uint64_t seed, float *out) {
    FT_CHECK(lowbit_fmt_ok(fmt) && in && out && n <= UINT32_MAX);
    return lowbit_apply_kernel()(fmt, in, 0, n, seed, 1.0f, out, 0);
}
ft_status ft_fedavg_acc_lowbit(ft_lowbit_fmt fmt, float *acc, const uint8_t *in, size_t i0, size_t n,
                               uint64_t seed, float weight) {
    FT_CHECK(lowbit_fmt_ok(fmt) && acc && in && i0 % ft_lowbit_block_values(fmt) == 0);
    FT_CHECK(i0 <= UINT32_MAX && n <= UINT32_MAX - i0);
    return lowbit_apply_kernel()(fmt, in, i0, n, seed, weight, acc, 1);
}
ft_status ft_fwht_f32(float *v, size_t len) {
    FT_CHECK(v && len >= 1 && len <= FT_RK && (len & (len - 1)) == 0);
    fwht_kernel()(v, len);
    return FT_OK;
}
