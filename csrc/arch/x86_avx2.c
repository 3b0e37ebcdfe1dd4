/* x86_avx2.c — AVX2 bodies of the codec and FedAvg kernels. Compiled without -m flags:
 * each function carries a target attribute and runs only after dispatch.c checked cpuid.
 * Every loop ends in the scalar reference for the remainder. Only mul and add are used
 * (no FMA), so the results are bit-identical to the reference. */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

FT_TARGET_AVX2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* u_i for 8 consecutive counters starting at i0, as ft_rng_u01 computes them. */
FT_TARGET_AVX2 static inline __m256 rng_u01_8(uint32_t i0, uint32_t key) {
    __m256i x = _mm256_add_epi32(_mm256_set1_epi32((int)i0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    x = _mm256_add_epi32(_mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x9E3779B1U)), _mm256_set1_epi32((int)key));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bU));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 8)), _mm256_set1_ps(0x1p-24f));
}

FT_TARGET_AVX2 ft_status ft_quantize_q8_avx2(const float *x, size_t n, float *residual,
                                                 ft_rounding rounding, uint64_t seed, ft_block_q8 *out) {
    const uint32_t key = ft_rng_key(seed);
    const size_t nfull = n / FT_QK;
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    const __m256 qmax = _mm256_set1_ps(127.0f), qmin = _mm256_set1_ps(-127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t b = 0; b < nfull; b++) {
        const float *xb = x + b * FT_QK;
        float *rb = residual ? residual + b * FT_QK : NULL;
        __m256 v[FT_QK / 8];
        __m256 vmax = zero, bad = zero;
        for (int j = 0; j < FT_QK / 8; j++) {
            if (j % 2 == 0) __builtin_prefetch(xb + FT_Q8_PREFETCH + 8 * j);
            __m256 t = _mm256_loadu_ps(xb + 8 * j);
            if (rb) t = _mm256_add_ps(t, _mm256_loadu_ps(rb + 8 * j));
            v[j] = t;
            bad = _mm256_add_ps(bad, _mm256_mul_ps(t, zero));
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, t));
        }
        if (_mm256_movemask_ps(_mm256_cmp_ps(bad, zero, _CMP_NEQ_UQ))) return FT_ERR_NONFINITE;
        float d, id;
        ft_q8_scale(hmax8(vmax), &d, &id);
        out[b].d = d;
        const __m256 vid = _mm256_set1_ps(id), vd = _mm256_set1_ps(d);
        for (int j = 0; j < FT_QK / 8; j += 4) {
            __m256i qi[4];
            for (int k = 0; k < 4; k++) {
                __m256 t = _mm256_mul_ps(v[j + k], vid);
                if (rounding == FT_ROUND_STOCHASTIC) {
                    t = _mm256_add_ps(t, rng_u01_8((uint32_t)(b * FT_QK + 8 * (j + k)), key));
                    t = _mm256_floor_ps(t);
                } else {
                    t = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                }
                t = _mm256_min_ps(_mm256_max_ps(t, qmin), qmax);
                if (rb) _mm256_storeu_ps(rb + 8 * (j + k), _mm256_sub_ps(v[j + k], _mm256_mul_ps(t, vd)));
                qi[k] = _mm256_cvtps_epi32(t);
            }
            const __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]);
            const __m256i p23 = _mm256_packs_epi32(qi[2], qi[3]);
            const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
            _mm256_storeu_si256((__m256i *)(out[b].qs + 8 * j), p);
        }
    }
    if (nfull * FT_QK < n) {
        const size_t i0 = nfull * FT_QK;
        return ft_q8_quantize_block_ref(x + i0, n - i0, residual ? residual + i0 : NULL, rounding, key,
                                        (uint32_t)i0, out + nfull);
    }
    return FT_OK;
}

FT_TARGET_AVX2 static inline __m256 load_q8x8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

FT_TARGET_AVX2 ft_status ft_dequantize_q8_avx2(const ft_block_q8 *in, size_t n, float *out) {
    const size_t nfull = n / FT_QK;
    for (size_t b = 0; b < nfull; b++) {
        const __m256 vd = _mm256_set1_ps(ft_block_d(&in[b]));
        float *o = out + b * FT_QK;
        for (int j = 0; j < FT_QK; j += 8) _mm256_storeu_ps(o + j, _mm256_mul_ps(vd, load_q8x8(in[b].qs + j)));
    }
    return ft_dequantize_q8_ref(in + nfull, n - nfull * FT_QK, out + nfull * FT_QK);
}

FT_TARGET_AVX2 ft_status ft_fedavg_acc_q8_avx2(float *acc, const ft_block_q8 *in, size_t n, float weight) {
    const size_t nfull = n / FT_QK;
    for (size_t b = 0; b < nfull; b++) {
        const __m256 vs = _mm256_set1_ps(weight * ft_block_d(&in[b]));
        float *a = acc + b * FT_QK;
        for (int j = 0; j < FT_QK; j += 16) {
            const __m256 a0 = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_mul_ps(vs, load_q8x8(in[b].qs + j)));
            const __m256 a1 = _mm256_add_ps(_mm256_loadu_ps(a + j + 8), _mm256_mul_ps(vs, load_q8x8(in[b].qs + j + 8)));
            _mm256_storeu_ps(a + j, a0);
            _mm256_storeu_ps(a + j + 8, a1);
        }
    }
    return ft_fedavg_acc_q8_ref(acc + nfull * FT_QK, in + nfull, n - nfull * FT_QK, weight);
}

FT_TARGET_AVX2 ft_status ft_fedavg_acc_f32_avx2(float *acc, const float *x, size_t n, float weight) {
    const __m256 vw = _mm256_set1_ps(weight);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), _mm256_mul_ps(vw, _mm256_loadu_ps(x + i))));
    return ft_fedavg_acc_f32_ref(acc + i, x + i, n - i, weight);
}

FT_TARGET_AVX2 ft_status ft_fedavg_apply_f32_avx2(float *w, float *acc, size_t n, float scale) {
    const __m256 vs = _mm256_set1_ps(scale), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(w + i, _mm256_add_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(_mm256_loadu_ps(acc + i), vs)));
        _mm256_storeu_ps(acc + i, zero);
    }
    return ft_fedavg_apply_f32_ref(w + i, acc + i, n - i, scale);
}

const ft_kernel_table ft_kernels_avx2 = {
    ft_quantize_q8_avx2, ft_dequantize_q8_avx2, ft_fedavg_acc_q8_avx2, ft_fedavg_acc_f32_avx2,
    ft_fedavg_apply_f32_avx2,
};

/* AVX-512: the FedAvg kernels are memory-bound and gain nothing from wider registers, so
 * they reuse the AVX2 bodies; quantize (hashing and rounding, compute-bound) has its own
 * version in x86_avx512.c. */
#endif
