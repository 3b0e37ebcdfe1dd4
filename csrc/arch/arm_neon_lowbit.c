/* arm_neon_lowbit.c — the sub-byte codecs on NEON: the one body of codec_lowbit_body.h with this
 * file's fast Walsh-Hadamard transform: the stages whose pairs lie
 * four or more apart in float32x4 registers, the first two the reference's scalar loops; the same
 * a + b, a - b on the same pairs, so bit-identical to ft_fwht_f32_ref. And its 4-bit / 2-bit
 * packer (qn_block_neon): qn_quantize_block's float32 operations lane by lane in the same order
 * (FRINTN rounds half to even, FRINTM is floor, the counter hash in 32-bit lanes; no fused
 * multiply-add), then the codes narrowed to bytes and paired by de-interleaving (UZP1/UZP2):
 * c0 | c1 << 4, and c0 | c1 << 2 | c2 << 4 | c3 << 6, low bits first as the reference. */
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

static inline uint32x4_t hash_neon(uint32x4_t i, uint32_t key) {
    uint32x4_t x = vaddq_u32(vmulq_n_u32(i, 0x9E3779B1U), vdupq_n_u32(key));
    x = veorq_u32(x, vshrq_n_u32(x, 16));
    x = vmulq_n_u32(x, 0x7feb352dU);
    x = veorq_u32(x, vshrq_n_u32(x, 15));
    x = vmulq_n_u32(x, 0x846ca68bU);
    return veorq_u32(x, vshrq_n_u32(x, 16));
}

static ft_status qn_block_neon(ft_lowbit_fmt fmt, const float *x, size_t len, float *residual, ft_rounding rounding,
                               uint32_t key, uint32_t i0, uint8_t *out) {
    const int two_bit = fmt == FT_FMT_Q2;
    const float qmax = lowbit_qmax(fmt);
    float v[FT_QK], rtail[FT_QK];
    float32x4_t bad = vdupq_n_f32(0.0f), amax = vdupq_n_f32(0.0f);
    for (size_t j = 0; j < FT_QK; j++) v[j] = j < len ? (residual ? x[j] + residual[j] : x[j]) : 0.0f;
    for (size_t j = 0; j < FT_QK; j += 4) {
        const float32x4_t t = vld1q_f32(v + j);
        bad = vaddq_f32(bad, vmulq_n_f32(t, 0.0f)); /* NaN in a lane: an Inf or NaN input */
        amax = vmaxq_f32(amax, vabsq_f32(t));
    }
    if (vminvq_u32(vceqq_f32(bad, bad)) == 0) return FT_ERR_NONFINITE;
    const float m = vmaxvq_f32(amax);
    float d = 0.0f, id = 0.0f;
    if (m >= FT_Q8_MIN_AMAX) {
        d = m / qmax;
        id = 1.0f / d;
    }
    memcpy(out, &d, sizeof d);
    uint8_t *qs = out + sizeof(float);
    static const uint32_t steps[4] = {0, 1, 2, 3};
    const uint32x4_t step = vld1q_u32(steps);
    const float32x4_t hi = vdupq_n_f32(qmax), lo = vdupq_n_f32(-qmax);
    const int32x4_t vzero = vdupq_n_s32(lowbit_zero(fmt));
    float *r = residual && len < FT_QK ? rtail : residual;
    for (size_t g = 0; g < FT_QK; g += 16) { /* 16 values: 8 bytes of 4-bit, 4 of 2-bit codes */
        uint16x4_t h[4];
        for (int k = 0; k < 4; k++) {
            const size_t j = g + 4 * (size_t)k;
            const float32x4_t vv = vld1q_f32(v + j);
            float32x4_t t = vmulq_n_f32(vv, id);
            if (rounding == FT_ROUND_STOCHASTIC) {
                const uint32x4_t i = vaddq_u32(vdupq_n_u32(i0 + (uint32_t)j), step);
                const float32x4_t u = vmulq_n_f32(vcvtq_f32_u32(vshrq_n_u32(hash_neon(i, key), 8)), 0x1p-24f);
                t = vrndmq_f32(vaddq_f32(t, u));
            } else {
                t = vrndnq_f32(t);
            }
            t = vmaxq_f32(vminq_f32(t, hi), lo);
            if (r) vst1q_f32(r + j, vsubq_f32(vv, vmulq_n_f32(t, d)));
            h[k] = vmovn_u32(vreinterpretq_u32_s32(vaddq_s32(vcvtq_s32_f32(t), vzero)));
        }
        const uint8x16_t c = vcombine_u8(vmovn_u16(vcombine_u16(h[0], h[1])), vmovn_u16(vcombine_u16(h[2], h[3])));
        uint8x16_t p = vorrq_u8(vuzp1q_u8(c, c), vshlq_n_u8(vuzp2q_u8(c, c), two_bit ? 2 : 4));
        if (!two_bit) {
            vst1_u8(qs + g / 2, vget_low_u8(p));
        } else {
            p = vorrq_u8(vuzp1q_u8(p, p), vshlq_n_u8(vuzp2q_u8(p, p), 4));
            const uint32_t w = vgetq_lane_u32(vreinterpretq_u32_u8(p), 0);
            memcpy(qs + g / 4, &w, sizeof w);
        }
    }
    if (residual && len < FT_QK) memcpy(residual, rtail, len * sizeof(float));
    return FT_OK;
}

ft_status ft_quantize_lowbit_neon(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual, ft_rounding rounding,
                                  uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_neon, qn_block_neon, fmt, x, n, residual, rounding, seed, out);
}
#endif
