/* x86_avx2_train.c — AVX2 bodies of the training kernels.
 * ft_gemm_f32: a 6x16 register-blocked micro-kernel that reads B with unit stride along N (the
 * engine's weights are stored so that every GEMM it runs has such a B; a panel is copied only
 * when it is reused) and broadcasts A through its strides. K is cut into KC-deep slices so the
 * 16-column panel of B stays in L1 while the kernel walks down M. Ragged N uses masked
 * loads/stores; ragged M a shorter instance of the same kernel. FMA rounds once per
 * multiply-add, so results differ from the scalar reference by a few ulps (tests: tolerance). */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

#define MR 6
#define NR 16
#define KC 256

#define FT_INLINE static inline __attribute__((always_inline))

FT_TARGET_AVX2 FT_INLINE void ukr(const int mr, const int full, const int packed, size_t kc, const float *A,
                                  ptrdiff_t rsa, ptrdiff_t csa, const float *B, size_t ldb, float *C, size_t ldc,
                                  int acc, __m256i m0, __m256i m1) {
    __m256 c0[MR], c1[MR];
    for (int r = 0; r < mr; r++) { c0[r] = _mm256_setzero_ps(); c1[r] = _mm256_setzero_ps(); }
    const float *ap[MR];
    for (int r = 0; r < mr; r++) ap[r] = A + r * rsa;
    for (size_t k = 0; k < kc; k++) {
        const __m256 b0 = (full || packed) ? _mm256_loadu_ps(B) : _mm256_maskload_ps(B, m0);
        const __m256 b1 = (full || packed) ? _mm256_loadu_ps(B + 8) : _mm256_maskload_ps(B + 8, m1);
        B += ldb;
        for (int r = 0; r < mr; r++) {
            const __m256 a = _mm256_broadcast_ss(ap[r]);
            ap[r] += csa;
            c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = C + r * ldc;
        if (full) {
            if (acc) {
                c0[r] = _mm256_add_ps(c0[r], _mm256_loadu_ps(cr));
                c1[r] = _mm256_add_ps(c1[r], _mm256_loadu_ps(cr + 8));
            }
            _mm256_storeu_ps(cr, c0[r]);
            _mm256_storeu_ps(cr + 8, c1[r]);
        } else {
            if (acc) {
                c0[r] = _mm256_add_ps(c0[r], _mm256_maskload_ps(cr, m0));
                c1[r] = _mm256_add_ps(c1[r], _mm256_maskload_ps(cr + 8, m1));
            }
            _mm256_maskstore_ps(cr, m0, c0[r]);
            _mm256_maskstore_ps(cr + 8, m1, c1[r]);
        }
    }
}

#define UKR_CASES(full, packed)                                                                      \
    switch (mr) {                                                                                    \
    case 6: ukr(6, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 5: ukr(5, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 4: ukr(4, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 3: ukr(3, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 2: ukr(2, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    default: ukr(1, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;             \
    }

/* When the kernel walks down more than one row block, the KC x 16 panel of B is first copied to
 * a contiguous, zero-padded stack buffer: B's rows may sit at a power-of-two stride (64, 128
 * columns) that maps the whole panel onto a few L1 sets and evicts it between row blocks. */
FT_TARGET_AVX2 ft_status ft_gemm_f32_avx2(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa,
                                          ptrdiff_t csa, const float *B, size_t ldb, float *C, size_t ldc,
                                          int accumulate) {
    float panel[KC * NR] __attribute__((aligned(32)));
    const int pack = M > MR;
    for (size_t j0 = 0; j0 < N; j0 += NR) {
        const size_t nr = N - j0 < NR ? N - j0 : NR;
        const int full = nr == NR;
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), lane);
        const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), lane);
        size_t k0 = 0;
        do {
            const size_t kc = K - k0 < KC ? K - k0 : KC;
            const int acc = accumulate || k0 > 0;
            const float *b = B + k0 * ldb + j0;
            size_t ldb_ = ldb;
            if (pack) {
                for (size_t k = 0; k < kc; k++) {
                    _mm256_store_ps(panel + k * NR, _mm256_maskload_ps(b + k * ldb, m0));
                    _mm256_store_ps(panel + k * NR + 8, _mm256_maskload_ps(b + k * ldb + 8, m1));
                }
                b = panel;
                ldb_ = NR;
            }
            for (size_t i0 = 0; i0 < M; i0 += MR) {
                const size_t mr = M - i0 < MR ? M - i0 : MR;
                const float *a = A + (ptrdiff_t)i0 * rsa + (ptrdiff_t)k0 * csa;
                float *c = C + i0 * ldc + j0;
                if (full) {
                    if (pack) { UKR_CASES(1, 1) } else { UKR_CASES(1, 0) }
                } else {
                    if (pack) { UKR_CASES(0, 1) } else { UKR_CASES(0, 0) }
                }
            }
            k0 += kc;
        } while (k0 < K);
    }
    return FT_OK;
}

FT_TARGET_AVX2 static void sgd_avx2(float *w, const float *g, float *v, const float *wg, size_t n, float lr,
                                    float m, float wd, float mu) {
    FT_SGD_BODY(w, g, v, wg, n, lr, m, wd, mu);
}

/* 8x8 tiles transposed in registers (unpack / shuffle / permute2f128); ragged edges scalar. */
FT_TARGET_AVX2 void ft_transpose_f32_avx2(const float *src, size_t R, size_t C, float *dst) {
    const size_t R8 = R / 8 * 8, C8 = C / 8 * 8;
    for (size_t r = 0; r < R8; r += 8)
        for (size_t c = 0; c < C8; c += 8) {
            __m256 t[8], u[8];
            for (int i = 0; i < 8; i++) t[i] = _mm256_loadu_ps(src + (r + i) * C + c);
            for (int i = 0; i < 8; i += 2) {
                u[i] = _mm256_unpacklo_ps(t[i], t[i + 1]);
                u[i + 1] = _mm256_unpackhi_ps(t[i], t[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                t[i] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
                t[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
                t[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
                t[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            for (int i = 0; i < 4; i++) {
                u[i] = _mm256_permute2f128_ps(t[i], t[i + 4], 0x20);
                u[i + 4] = _mm256_permute2f128_ps(t[i], t[i + 4], 0x31);
            }
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (c + i) * R + r, u[i]);
        }
    for (size_t r = 0; r < R; r++)
        for (size_t c = (r < R8 ? C8 : 0); c < C; c++) dst[c * R + r] = src[r * C + c];
}

/* y += a * b, vectorized by the compiler under the target attribute (bit-exact: no FMA) */
FT_TARGET_AVX2 static void muladd_avx2(float *y, const float *a, const float *b, size_t n) { FT_MULADD_BODY(y, a, b, n); }

const ft_train_kernel_table ft_train_kernels_avx2 = {ft_gemm_f32_avx2, sgd_avx2, ft_transpose_f32_avx2, muladd_avx2};
#endif
