/* x86_avx512.c — AVX-512 body of the quantizer (hashing + rounding is compute-bound, so the
 * wider registers pay). The FedAvg kernels are memory-bound: this path reuses their AVX2 bodies. */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

FT_TARGET_AVX512 static inline __m512 rng_u01_16(uint32_t i0, uint32_t key) {
    __m512i x = _mm512_add_epi32(_mm512_set1_epi32((int)i0),
                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    x = _mm512_add_epi32(_mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x9E3779B1U)), _mm512_set1_epi32((int)key));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846ca68bU));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(x, 8)), _mm512_set1_ps(0x1p-24f));
}

FT_TARGET_AVX512 static ft_status quantize_q8_avx512(const float *x, size_t n, float *residual,
                                                     ft_rounding rounding, uint64_t seed, ft_block_q8 *out) {
    const uint32_t key = ft_rng_key(seed);
    const size_t nfull = n / FT_QK;
    const __m512 zero = _mm512_setzero_ps();
    const __m512 qmax = _mm512_set1_ps(127.0f), qmin = _mm512_set1_ps(-127.0f);
    for (size_t b = 0; b < nfull; b++) {
        const float *xb = x + b * FT_QK;
        float *rb = residual ? residual + b * FT_QK : NULL;
        __m512 v[FT_QK / 16];
        __m512 vmax = zero, bad = zero;
        for (int j = 0; j < FT_QK / 16; j++) {
            __builtin_prefetch(xb + FT_Q8_PREFETCH + 16 * j); /* hardware prefetch alone lags behind */
            __m512 t = _mm512_loadu_ps(xb + 16 * j);
            if (rb) t = _mm512_add_ps(t, _mm512_loadu_ps(rb + 16 * j));
            v[j] = t;
            bad = _mm512_add_ps(bad, _mm512_mul_ps(t, zero));
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(t));
        }
        if (_mm512_cmp_ps_mask(bad, zero, _CMP_NEQ_UQ)) return FT_ERR_NONFINITE;
        float d, id;
        ft_q8_scale(_mm512_reduce_max_ps(vmax), &d, &id);
        out[b].d = d;
        const __m512 vid = _mm512_set1_ps(id), vd = _mm512_set1_ps(d);
        for (int j = 0; j < FT_QK / 16; j++) {
            __m512 t = _mm512_mul_ps(v[j], vid);
            if (rounding == FT_ROUND_STOCHASTIC)
                t = _mm512_roundscale_ps(_mm512_add_ps(t, rng_u01_16((uint32_t)(b * FT_QK + 16 * j), key)),
                                         _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
            else
                t = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            t = _mm512_min_ps(_mm512_max_ps(t, qmin), qmax);
            if (rb) _mm512_storeu_ps(rb + 16 * j, _mm512_sub_ps(v[j], _mm512_mul_ps(t, vd)));
            _mm_storeu_si128((__m128i *)(out[b].qs + 16 * j), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(t)));
        }
    }
    if (nfull * FT_QK < n) {
        const size_t i0 = nfull * FT_QK;
        return ft_q8_quantize_block_ref(x + i0, n - i0, residual ? residual + i0 : NULL, rounding, key,
                                        (uint32_t)i0, out + nfull);
    }
    return FT_OK;
}

const ft_kernel_table ft_kernels_avx512 = {
    quantize_q8_avx512, ft_dequantize_q8_avx2, ft_fedavg_acc_q8_avx2, ft_fedavg_acc_f32_avx2,
    ft_fedavg_apply_f32_avx2,
};
#endif
