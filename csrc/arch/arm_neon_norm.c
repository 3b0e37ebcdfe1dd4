/* arm_neon_norm.c — NEON body of ft_sumsq_q8: per block, q*q widened to int16 (at most 2^14,
 * exact) and pairwise-added into int32; blocks summed in order in float64 through the
 * reference's ft_q8_block_term, so the result is bit-identical to norm_ref.c. */
#include "ft_internal.h"

#if FT_ARCH_ARM64
#include <arm_neon.h>

static inline uint32_t block_sumsq_neon(const ft_block_q8 *b) {
    int32x4_t acc = vdupq_n_s32(0);
    for (int j = 0; j < FT_QK; j += 16) {
        const int8x16_t q = vld1q_s8(b->qs + j);
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(q), vget_low_s8(q)));
        acc = vpadalq_s16(acc, vmull_high_s8(q, q));
    }
    return (uint32_t)vaddvq_s32(acc);
}

ft_status ft_sumsq_q8_neon(const ft_block_q8 *in, size_t n, double *out) {
    const size_t nfull = n / FT_QK;
    double acc = 0.0;
    for (size_t b = 0; b < nfull; b++) acc += ft_q8_block_term(&in[b], block_sumsq_neon(&in[b]));
    if (nfull * FT_QK < n) acc += ft_q8_block_term(&in[nfull], ft_q8_block_sumsq_ref(&in[nfull], n - nfull * FT_QK));
    *out = acc;
    return FT_OK;
}
#endif
