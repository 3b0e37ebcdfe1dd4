/* arm_neon_lowbit.c — the sub-byte codecs on NEON: the one body of codec_lowbit_body.h with this
 * file's fast Walsh-Hadamard transform: the stages whose pairs lie
 * four or more apart in float32x4 registers, the first two the reference's scalar loops; the same
 * a + b, a - b on the same pairs, so bit-identical to ft_fwht_f32_ref. */
#include "codec_lowbit_body.h"

#if FT_ARCH_ARM64
#include <arm_neon.h>

void ft_fwht_f32_neon(float *v, size_t len) {
    for (size_t h = 1; h < len && h < 4; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                const float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    for (size_t h = 4; h < len; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h)
            for (size_t j = i; j < i + h; j += 4) {
                const float32x4_t a = vld1q_f32(v + j), b = vld1q_f32(v + j + h);
                vst1q_f32(v + j, vaddq_f32(a, b));
                vst1q_f32(v + j + h, vsubq_f32(a, b));
            }
}

ft_status ft_quantize_lowbit_neon(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual, ft_rounding rounding,
                                  uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_neon, fmt, x, n, residual, rounding, seed, out);
}
#endif
