/* gemm_ref.c — the training engine's one GEMM: scalar reference (the spec) and its dispatcher.
 * C[M][N] (+)= A * B with A read through (row, column) strides so one kernel serves the plain
 * and the transposed products of forward and backward; B and C have unit stride along N. */
#include "ft_internal.h"

ft_status ft_gemm_f32_ref(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                          const float *B, size_t ldb, float *C, size_t ldc, int accumulate) {
    for (size_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (!accumulate)
            for (size_t j = 0; j < N; j++) c[j] = 0.0f;
        for (size_t k = 0; k < K; k++) {
            const float a = A[(ptrdiff_t)i * rsa + (ptrdiff_t)k * csa];
            const float *b = B + k * ldb;
            for (size_t j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
    return FT_OK;
}

static const ft_train_kernel_table k_ref = {ft_gemm_f32_ref};
#if FT_ARCH_X86
static const ft_train_kernel_table k_avx2 = {ft_gemm_f32_avx2};
static const ft_train_kernel_table k_avx512 = {ft_gemm_f32_avx512};
#endif
#if FT_ARCH_ARM64
static const ft_train_kernel_table k_neon = {ft_gemm_f32_neon};
#endif

const ft_train_kernel_table *ft_train_kernels(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return &k_avx2;
    case FT_SIMD_AVX512: return &k_avx512;
#endif
#if FT_ARCH_ARM64
    case FT_SIMD_NEON: return &k_neon;
#endif
    default: return &k_ref;
    }
}

ft_status ft_gemm_f32(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                      const float *B, size_t ldb, float *C, size_t ldc, int accumulate) {
    if ((M && N && K && !A) || (M && N && K && !B) || (M && N && !C) || ldb < N || ldc < N) return FT_ERR_ARG;
    if (M == 0 || N == 0) return FT_OK;
    return ft_train_kernels()->gemm_f32(M, N, K, A, rsa, csa, B, ldb, C, ldc, accumulate);
}
