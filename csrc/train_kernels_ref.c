/* train_kernels_ref.c — scalar references (the spec) of the training engine's kernels and their
 * dispatcher:
 *   ft_gemm_f32      C[M][N] (+)= A * B, A read through (row, column) strides so one kernel serves
 *                    the plain and the transposed products of forward and backward; B and C have
 *                    unit stride along N;
 *   sgd_f32          the SGD update (FT_SGD_BODY in ft_internal.h);
 *   transpose_f32    dst[c][r] = src[r][c];
 *   muladd_f32       y[i] += a[i] * b[i] (FT_MULADD_BODY). */
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

void ft_sgd_f32_ref(float *w, const float *g, float *v, const float *wg, size_t n, float lr, float m, float wd,
                    float mu) {
    FT_SGD_BODY(w, g, v, wg, n, lr, m, wd, mu);
}

void ft_transpose_f32_ref(const float *src, size_t R, size_t C, float *dst) {
    const size_t T = 32; /* tiles, so both sides stay in cache */
    for (size_t r0 = 0; r0 < R; r0 += T)
        for (size_t c0 = 0; c0 < C; c0 += T) {
            const size_t r1 = r0 + T < R ? r0 + T : R, c1 = c0 + T < C ? c0 + T : C;
            for (size_t c = c0; c < c1; c++)
                for (size_t r = r0; r < r1; r++) dst[c * R + r] = src[r * C + c];
        }
}

void ft_muladd_f32_ref(float *y, const float *a, const float *b, size_t n) { FT_MULADD_BODY(y, a, b, n); }

static const ft_train_kernel_table k_ref = {ft_gemm_f32_ref, ft_sgd_f32_ref, ft_transpose_f32_ref, ft_muladd_f32_ref};

const ft_train_kernel_table *ft_train_kernels(void) {
    switch (ft_simd_get()) {
#if FT_ARCH_X86
    case FT_SIMD_AVX2: return &ft_train_kernels_avx2;
    case FT_SIMD_AVX512: return &ft_train_kernels_avx512;
#endif
#if FT_ARCH_ARM64 || FT_ARCH_ARM32
    case FT_SIMD_NEON: return &ft_train_kernels_neon;
#endif
    default: return &k_ref;
    }
}

ft_status ft_gemm_f32(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                      const float *B, size_t ldb, float *C, size_t ldc, int accumulate) {
    if ((M && N && K && (!A || !B)) || (M && N && !C) || ldb < N || ldc < N) return FT_ERR_ARG;
    if (M == 0 || N == 0) return FT_OK;
    return ft_train_kernels()->gemm_f32(M, N, K, A, rsa, csa, B, ldb, C, ldc, accumulate);
}
