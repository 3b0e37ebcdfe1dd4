/* arm_neon_train.c — NEON bodies of the training kernels (aarch64, and armv7 when the CPU has
 * NEON). ft_gemm_f32: the AVX2 design (csrc/arch/x86_avx2_train.c) with an 8x8 micro-kernel (16
 * q-register accumulators); ragged N goes through a small stack tile so no load or store leaves
 * the caller's matrices. On armv7 the file is compiled for NEON by the pragma below (the
 * compiler's baseline there is VFP only; dispatch.c calls it only when HWCAP says NEON), and
 * multiply-accumulate is VMLA (not fused: VFPv4's VFMA is missing on Cortex-A8/A9). */
#include "ft_internal.h"

#if FT_ARCH_ARM64 || FT_ARCH_ARM32
#if FT_ARCH_ARM32
#pragma GCC push_options
#pragma GCC target("fpu=neon")
#endif
#include <arm_neon.h>
#if FT_ARCH_ARM64
#define FT_NEON_MLA(c, a, b) vfmaq_f32((c), (a), (b))
#else
#define FT_NEON_MLA(c, a, b) vmlaq_f32((c), (a), (b))
#endif

#define MR 8
#define NR 8
#define KC 256

#define FT_INLINE static inline __attribute__((always_inline))

FT_INLINE void ukr(const int mr, size_t kc, const float *A, ptrdiff_t rsa, ptrdiff_t csa, const float *B,
                   size_t ldb, size_t nr, float *C, size_t ldc, int acc) {
    float32x4_t c0[MR], c1[MR];
    for (int r = 0; r < mr; r++) { c0[r] = vdupq_n_f32(0.0f); c1[r] = vdupq_n_f32(0.0f); }
    const float *ap[MR];
    for (int r = 0; r < mr; r++) ap[r] = A + r * rsa;
    float tile[NR];
    for (size_t k = 0; k < kc; k++) {
        const float *bk = B;
        if (nr < NR) {
            for (size_t j = 0; j < NR; j++) tile[j] = j < nr ? B[j] : 0.0f;
            bk = tile;
        }
        const float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4);
        B += ldb;
        for (int r = 0; r < mr; r++) {
            const float32x4_t a = vld1q_dup_f32(ap[r]);
            ap[r] += csa;
            c0[r] = FT_NEON_MLA(c0[r], a, b0);
            c1[r] = FT_NEON_MLA(c1[r], a, b1);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = C + r * ldc;
        if (nr == NR) {
            if (acc) { c0[r] = vaddq_f32(c0[r], vld1q_f32(cr)); c1[r] = vaddq_f32(c1[r], vld1q_f32(cr + 4)); }
            vst1q_f32(cr, c0[r]);
            vst1q_f32(cr + 4, c1[r]);
        } else {
            float out[NR];
            vst1q_f32(out, c0[r]);
            vst1q_f32(out + 4, c1[r]);
            for (size_t j = 0; j < nr; j++) cr[j] = acc ? cr[j] + out[j] : out[j];
        }
    }
}

ft_status ft_gemm_f32_neon(size_t M, size_t N, size_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                           const float *B, size_t ldb, float *C, size_t ldc, int accumulate) {
    for (size_t j0 = 0; j0 < N; j0 += NR) {
        const size_t nr = N - j0 < NR ? N - j0 : NR;
        size_t k0 = 0;
        do {
            const size_t kc = K - k0 < KC ? K - k0 : KC;
            const int acc = accumulate || k0 > 0;
            for (size_t i0 = 0; i0 < M; i0 += MR) {
                const size_t mr = M - i0 < MR ? M - i0 : MR;
                const float *a = A + (ptrdiff_t)i0 * rsa + (ptrdiff_t)k0 * csa;
                const float *b = B + k0 * ldb + j0;
                float *c = C + i0 * ldc + j0;
                switch (mr) {
                case 8: ukr(8, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                case 7: ukr(7, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                case 6: ukr(6, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                case 5: ukr(5, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                case 4: ukr(4, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                case 3: ukr(3, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                case 2: ukr(2, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                default: ukr(1, kc, a, rsa, csa, b, ldb, nr, c, ldc, acc); break;
                }
            }
            k0 += kc;
        } while (k0 < K);
    }
    return FT_OK;
}

/* NEON is baseline on aarch64: the reference loops are already vectorized by the compiler there
 * (on armv7 they stay VFP, IEEE, bit-identical). */
const ft_train_kernel_table ft_train_kernels_neon = {ft_gemm_f32_neon, ft_sgd_f32_ref, ft_transpose_f32_ref,
                                                   ft_muladd_f32_ref};
#if FT_ARCH_ARM32
#pragma GCC pop_options
#endif
#endif
