/* x86_avx512_train.c — AVX-512 bodies of the training kernels. ft_gemm_f32: the AVX2 design (csrc/arch/x86_avx2_train.c)
 * with a 12x32 micro-kernel (24 zmm accumulators) and mask registers for ragged N. 12 rows cover
 * a whole batch of 10 in one pass of B. */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

#define MR 12
#define NR 32
#define KC 256

#define FT_INLINE static inline __attribute__((always_inline))

FT_TARGET_AVX512 FT_INLINE void ukr(const int mr, const int full, const int packed, size_t kc, const float *A,
                                    ptrdiff_t rsa, ptrdiff_t csa, const float *B, size_t ldb, float *C, size_t ldc,
                                    int acc, __mmask16 m0, __mmask16 m1) {
    __m512 c0[MR], c1[MR];
    for (int r = 0; r < mr; r++) { c0[r] = _mm512_setzero_ps(); c1[r] = _mm512_setzero_ps(); }
    const float *ap[MR];
    for (int r = 0; r < mr; r++) ap[r] = A + r * rsa;
    for (size_t k = 0; k < kc; k++) {
        const __m512 b0 = (full || packed) ? _mm512_loadu_ps(B) : _mm512_maskz_loadu_ps(m0, B);
        const __m512 b1 = (full || packed) ? _mm512_loadu_ps(B + 16) : _mm512_maskz_loadu_ps(m1, B + 16);
        B += ldb;
        for (int r = 0; r < mr; r++) {
            const __m512 a = _mm512_set1_ps(*ap[r]);
            ap[r] += csa;
            c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = C + r * ldc;
        if (full) {
            if (acc) {
                c0[r] = _mm512_add_ps(c0[r], _mm512_loadu_ps(cr));
                c1[r] = _mm512_add_ps(c1[r], _mm512_loadu_ps(cr + 16));
            }
            _mm512_storeu_ps(cr, c0[r]);
            _mm512_storeu_ps(cr + 16, c1[r]);
        } else {
            if (acc) {
                c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, cr));
                c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
            }
            _mm512_mask_storeu_ps(cr, m0, c0[r]);
            _mm512_mask_storeu_ps(cr + 16, m1, c1[r]);
        }
    }
}

#define UKR_CASES(full, packed)                                                                      \
    switch (mr) {                                                                                    \
    case 12: ukr(12, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;            \
    case 11: ukr(11, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;            \
    case 10: ukr(10, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;            \
    case 9: ukr(9, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 8: ukr(8, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 7: ukr(7, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 6: ukr(6, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 5: ukr(5, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 4: ukr(4, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 3: ukr(3, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    case 2: ukr(2, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;              \
    default: ukr(1, full, packed, kc, a, rsa, csa, b, ldb_, c, ldc, acc, m0, m1); break;             \
    }

/* When the kernel walks down more than one row block, the KC x 32 panel of B is first copied to
 * a contiguous, zero-padded stack buffer: B's rows may sit at a power-of-two stride (64, 128
 * columns) that maps the whole panel onto a few L1 sets and evicts it between row blocks. */
FT_TARGET_AVX512 ft_status ft_gemm_f32_avx512(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa,
                                              ptrdiff_t csa, const float *B, size_t ldb, float *C, size_t ldc,
                                              int accumulate) {
    float panel[KC * NR] __attribute__((aligned(64)));
    const int pack = M > MR;
    for (size_t j0 = 0; j0 < N; j0 += NR) {
        const size_t nr = N - j0 < NR ? N - j0 : NR;
        const int full = nr == NR;
        const __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
        const __mmask16 m1 = nr <= 16 ? (__mmask16)0 : nr >= 32 ? (__mmask16)0xFFFF
                                                                 : (__mmask16)((1u << (nr - 16)) - 1u);
        size_t k0 = 0;
        do {
            const size_t kc = K - k0 < KC ? K - k0 : KC;
            const int acc = accumulate || k0 > 0;
            const float *b = B + k0 * ldb + j0;
            size_t ldb_ = ldb;
            if (pack) {
                for (size_t k = 0; k < kc; k++) {
                    _mm512_store_ps(panel + k * NR, _mm512_maskz_loadu_ps(m0, b + k * ldb));
                    _mm512_store_ps(panel + k * NR + 16, _mm512_maskz_loadu_ps(m1, b + k * ldb + 16));
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

FT_TARGET_AVX512 static void sgd_avx512(float *w, const float *g, float *v, const float *wg, size_t n, float lr,
                                        float m, float wd, float mu) {
    FT_SGD_BODY(w, g, v, wg, n, lr, m, wd, mu);
}

/* y += a * b, vectorized by the compiler under the target attribute (bit-exact: no FMA) */
FT_TARGET_AVX512 static void muladd_avx512(float *y, const float *a, const float *b, size_t n) { FT_MULADD_BODY(y, a, b, n); }

const ft_train_kernel_table ft_train_kernels_avx512 = {ft_gemm_f32_avx512, sgd_avx512, ft_transpose_f32_avx2, muladd_avx512};
#endif
