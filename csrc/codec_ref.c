/* codec_ref.c — scalar reference of the int8 block codec and the FedAvg kernels.
 * Written for clarity, never tuned: this is the spec the SIMD paths are tested against. */
#include <math.h>
#include <string.h>

#include "ft_internal.h"

/* One block of len <= FT_QK values whose first value is parameter number i0 (the RNG counter).
 * Shared by every path for the ragged last block. */
ft_status ft_q8_quantize_block_ref(const float *x, size_t len, float *residual, ft_rounding rounding,
                                   uint32_t key, uint32_t i0, ft_block_q8 *out) {
    float v[FT_QK];
    float amax = 0.0f;
    float nonfinite = 0.0f; /* stays 0 unless some v is NaN/Inf (then 0*v is NaN) */
    for (size_t j = 0; j < len; j++) {
        v[j] = residual ? x[j] + residual[j] : x[j];
        nonfinite += v[j] * 0.0f;
        const float a = fabsf(v[j]);
        if (a > amax) amax = a;
    }
    if (nonfinite != 0.0f || nonfinite != nonfinite) return FT_ERR_NONFINITE;
    float d, id;
    ft_q8_scale(amax, &d, &id);
    out->d = d;
    memset(out->qs, 0, FT_QK);
    for (size_t j = 0; j < len; j++) {
        float t = v[j] * id;
        if (rounding == FT_ROUND_STOCHASTIC)
            t = floorf(t + ft_rng_u01(i0 + (uint32_t)j, key));
        else
            t = nearbyintf(t); /* half to even, the default rounding mode */
        if (t > 127.0f) t = 127.0f;
        if (t < -127.0f) t = -127.0f;
        const int8_t q = (int8_t)t;
        out->qs[j] = q;
        if (residual) residual[j] = v[j] - (float)q * d;
    }
    return FT_OK;
}

ft_status ft_quantize_q8_ref(const float *x, size_t n, float *residual, ft_rounding rounding,
                             uint64_t seed, ft_block_q8 *out) {
    const uint32_t key = ft_rng_key(seed);
    for (size_t b = 0; b < ft_q8_nblocks(n); b++) {
        const size_t i0 = b * FT_QK;
        const size_t len = (n - i0 < FT_QK) ? n - i0 : FT_QK;
        const ft_status st = ft_q8_quantize_block_ref(x + i0, len, residual ? residual + i0 : NULL,
                                                      rounding, key, (uint32_t)i0, out + b);
        if (st != FT_OK) return st;
    }
    return FT_OK;
}

ft_status ft_dequantize_q8_ref(const ft_block_q8 *in, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = ft_block_d(&in[i / FT_QK]) * (float)in[i / FT_QK].qs[i % FT_QK];
    return FT_OK;
}

ft_status ft_fedavg_acc_q8_ref(float *acc, const ft_block_q8 *in, size_t n, float weight) {
    for (size_t i = 0; i < n; i++) {
        const float s = weight * ft_block_d(&in[i / FT_QK]);
        acc[i] += s * (float)in[i / FT_QK].qs[i % FT_QK];
    }
    return FT_OK;
}

ft_status ft_fedavg_acc_f32_ref(float *acc, const float *x, size_t n, float weight) {
    for (size_t i = 0; i < n; i++) acc[i] += weight * x[i];
    return FT_OK;
}

ft_status ft_fedavg_apply_f32_ref(float *w, float *acc, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) {
        w[i] += acc[i] * scale;
        acc[i] = 0.0f;
    }
    return FT_OK;
}

const ft_kernel_table ft_kernels_ref = {
    ft_quantize_q8_ref, ft_dequantize_q8_ref, ft_fedavg_acc_q8_ref, ft_fedavg_acc_f32_ref,
    ft_fedavg_apply_f32_ref,
};
