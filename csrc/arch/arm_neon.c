/* arm_neon.c — NEON (AArch64 Advanced SIMD) bodies of the codec and FedAvg kernels.
 * NEON is mandatory on ARMv8-A, so no run-time check is needed on aarch64. On 32-bit Arm
 * (armv7) the scalar reference runs: vrndnq/vmaxvq are ARMv8-only and NEON is optional there.
 * Only separate mul and add (no FMA): bit-identical to the reference. */
#include "ft_internal.h"

#if FT_ARCH_ARM64
#include <arm_neon.h>

static inline float32x4_t rng_u01_4(uint32_t i0, uint32_t key) {
    const uint32_t lanes[4] = {0, 1, 2, 3};
    uint32x4_t x = vaddq_u32(vdupq_n_u32(i0), vld1q_u32(lanes));
    x = vaddq_u32(vmulq_n_u32(x, 0x9E3779B1U), vdupq_n_u32(key));
    x = veorq_u32(x, vshrq_n_u32(x, 16));
    x = vmulq_n_u32(x, 0x7feb352dU);
    x = veorq_u32(x, vshrq_n_u32(x, 15));
    x = vmulq_n_u32(x, 0x846ca68bU);
    x = veorq_u32(x, vshrq_n_u32(x, 16));
    return vmulq_n_f32(vcvtq_f32_u32(vshrq_n_u32(x, 8)), 0x1p-24f);
}

static ft_status quantize_q8_neon(const float *x, size_t n, float *residual, ft_rounding rounding,
                                  uint64_t seed, ft_block_q8 *out) {
    const uint32_t key = ft_rng_key(seed);
    const size_t nfull = n / FT_QK;
    const float32x4_t zero = vdupq_n_f32(0.0f);
    const float32x4_t qmax = vdupq_n_f32(127.0f), qmin = vdupq_n_f32(-127.0f);
    for (size_t b = 0; b < nfull; b++) {
        const float *xb = x + b * FT_QK;
        float *rb = residual ? residual + b * FT_QK : NULL;
        float32x4_t v[FT_QK / 4];
        float32x4_t vmax = zero, bad = zero;
        for (int j = 0; j < FT_QK / 4; j++) {
            if (j % 4 == 0) __builtin_prefetch(xb + FT_Q8_PREFETCH + 4 * j);
            float32x4_t t = vld1q_f32(xb + 4 * j);
            if (rb) t = vaddq_f32(t, vld1q_f32(rb + 4 * j));
            v[j] = t;
            bad = vaddq_f32(bad, vmulq_f32(t, zero));
            vmax = vmaxq_f32(vmax, vabsq_f32(t));
        }
        /* bad == 0 in every lane unless a NaN/Inf was seen (NaN != 0 compares false) */
        if (vminvq_u32(vceqq_f32(bad, zero)) == 0) return FT_ERR_NONFINITE;
        float d, id;
        ft_q8_scale(vmaxvq_f32(vmax), &d, &id);
        out[b].d = d;
        for (int j = 0; j < FT_QK / 4; j += 2) {
            int32x4_t qi[2];
            for (int k = 0; k < 2; k++) {
                float32x4_t t = vmulq_n_f32(v[j + k], id);
                if (rounding == FT_ROUND_STOCHASTIC)
                    t = vrndmq_f32(vaddq_f32(t, rng_u01_4((uint32_t)(b * FT_QK + 4 * (j + k)), key)));
                else
                    t = vrndnq_f32(t);
                t = vminq_f32(vmaxq_f32(t, qmin), qmax);
                if (rb) vst1q_f32(rb + 4 * (j + k), vsubq_f32(v[j + k], vmulq_n_f32(t, d)));
                qi[k] = vcvtq_s32_f32(t);
            }
            const int16x8_t q16 = vcombine_s16(vmovn_s32(qi[0]), vmovn_s32(qi[1]));
            vst1_s8(out[b].qs + 4 * j, vmovn_s16(q16));
        }
    }
    if (nfull * FT_QK < n) {
        const size_t i0 = nfull * FT_QK;
        return ft_q8_quantize_block_ref(x + i0, n - i0, residual ? residual + i0 : NULL, rounding, key,
                                        (uint32_t)i0, out + nfull);
    }
    return FT_OK;
}

static inline void load_q8x8(const int8_t *q, float32x4_t *lo, float32x4_t *hi) {
    const int16x8_t s = vmovl_s8(vld1_s8(q));
    *lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(s)));
    *hi = vcvtq_f32_s32(vmovl_s16(vget_high_s16(s)));
}

static ft_status dequantize_q8_neon(const ft_block_q8 *in, size_t n, float *out) {
    const size_t nfull = n / FT_QK;
    for (size_t b = 0; b < nfull; b++) {
        float *o = out + b * FT_QK;
        for (int j = 0; j < FT_QK; j += 8) {
            float32x4_t lo, hi;
            load_q8x8(in[b].qs + j, &lo, &hi);
            vst1q_f32(o + j, vmulq_n_f32(lo, ft_block_d(&in[b])));
            vst1q_f32(o + j + 4, vmulq_n_f32(hi, ft_block_d(&in[b])));
        }
    }
    return ft_dequantize_q8_ref(in + nfull, n - nfull * FT_QK, out + nfull * FT_QK);
}

static ft_status fedavg_acc_q8_neon(float *acc, const ft_block_q8 *in, size_t n, float weight) {
    const size_t nfull = n / FT_QK;
    for (size_t b = 0; b < nfull; b++) {
        const float s = weight * ft_block_d(&in[b]);
        float *a = acc + b * FT_QK;
        for (int j = 0; j < FT_QK; j += 8) {
            float32x4_t lo, hi;
            load_q8x8(in[b].qs + j, &lo, &hi);
            vst1q_f32(a + j, vaddq_f32(vld1q_f32(a + j), vmulq_n_f32(lo, s)));
            vst1q_f32(a + j + 4, vaddq_f32(vld1q_f32(a + j + 4), vmulq_n_f32(hi, s)));
        }
    }
    return ft_fedavg_acc_q8_ref(acc + nfull * FT_QK, in + nfull, n - nfull * FT_QK, weight);
}

static ft_status fedavg_acc_f32_neon(float *acc, const float *x, size_t n, float weight) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(acc + i, vaddq_f32(vld1q_f32(acc + i), vmulq_n_f32(vld1q_f32(x + i), weight)));
    return ft_fedavg_acc_f32_ref(acc + i, x + i, n - i, weight);
}

static ft_status fedavg_apply_f32_neon(float *w, float *acc, size_t n, float scale) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        vst1q_f32(w + i, vaddq_f32(vld1q_f32(w + i), vmulq_n_f32(vld1q_f32(acc + i), scale)));
        vst1q_f32(acc + i, vdupq_n_f32(0.0f));
    }
    return ft_fedavg_apply_f32_ref(w + i, acc + i, n - i, scale);
}

const ft_kernel_table ft_kernels_neon = {
    quantize_q8_neon, dequantize_q8_neon, fedavg_acc_q8_neon, fedavg_acc_f32_neon, fedavg_apply_f32_neon,
};
#endif
