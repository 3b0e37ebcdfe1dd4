/* x86_lowbit.c — the sub-byte codecs under AVX2 and AVX-512: the one body of
 * codec_lowbit_body.h compiled under each target attribute, with this file's fast Walsh-Hadamard
 * transform and 4-bit / 2-bit packers. Each FWHT stage does the reference's a + b, a - b on the
 * same pairs (no reassociation), so the result is bit-identical: the stages whose pairs lie a
 * vector apart run in vector registers, the first few (pairs inside one vector) are the
 * reference's scalar loops.
 *
 * The packers (qn_block_avx2 / _avx512) do qn_quantize_block's float32 operations lane by lane in
 * the same order (v = x + r; |v| max; t = v * id; round half to even, or floor(t + u) with the
 * counter hash in 32-bit integer lanes; clamp; r = v - t * d, no FMA), then pack the codes with
 * multiply-add of small integers: 4-bit (c0 + 16 c1), 2-bit (c0 + 4 c1 + 16 c2 + 64 c3), low bits
 * first, as the reference's shifts. A block shorter than 128 (the last) is padded with zeros as
 * the reference pads it (code `zero`, no residual written). */
#include "codec_lowbit_body.h"

#if FT_ARCH_X86
#include <immintrin.h>

static void fwht_stages_scalar(float *v, size_t len, size_t h_end) {
    for (size_t h = 1; h < len && h < h_end; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                const float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

FT_TARGET_AVX2 void ft_fwht_f32_avx2(float *v, size_t len) {
    fwht_stages_scalar(v, len, 8);
    for (size_t h = 8; h < len; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h)
            for (size_t j = i; j < i + h; j += 8) {
                const __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + j + h);
                _mm256_storeu_ps(v + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(v + j + h, _mm256_sub_ps(a, b));
            }
}

FT_TARGET_AVX512 void ft_fwht_f32_avx512(float *v, size_t len) {
    fwht_stages_scalar(v, len, 8);
    for (size_t h = 8; h < len && h < 16; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h) {
            const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + h);
            _mm256_storeu_ps(v + i, _mm256_add_ps(a, b));
            _mm256_storeu_ps(v + i + h, _mm256_sub_ps(a, b));
        }
    for (size_t h = 16; h < len; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h)
            for (size_t j = i; j < i + h; j += 16) {
                const __m512 a = _mm512_loadu_ps(v + j), b = _mm512_loadu_ps(v + j + h);
                _mm512_storeu_ps(v + j, _mm512_add_ps(a, b));
                _mm512_storeu_ps(v + j + h, _mm512_sub_ps(a, b));
            }
}
/* v[0..128): x (+ residual) for j < len, 0 after; the reference's v[] with its padding. */
static inline void qn_gather(const float *x, size_t len, const float *residual, float *v) {
    for (size_t j = 0; j < FT_QK; j++) v[j] = j < len ? (residual ? x[j] + residual[j] : x[j]) : 0.0f;
}

FT_TARGET_AVX2 static inline __m256i hash_avx2(__m256i i, uint32_t key) {
    __m256i x = _mm256_add_epi32(_mm256_mullo_epi32(i, _mm256_set1_epi32((int)0x9E3779B1U)), _mm256_set1_epi32((int)key));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bU));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

FT_TARGET_AVX2 static ft_status qn_block_avx2(ft_lowbit_fmt fmt, const float *x, size_t len, float *residual,
                                              ft_rounding rounding, uint32_t key, uint32_t i0, uint8_t *out) {
    const int two_bit = fmt == FT_FMT_Q2;
    const float qmax = lowbit_qmax(fmt);
    float v[FT_QK], rtail[FT_QK];
    __m256 bad = _mm256_setzero_ps(), amax = _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps(), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    if (len == FT_QK) {
        for (size_t j = 0; j < FT_QK; j += 8) {
            __m256 t = _mm256_loadu_ps(x + j);
            if (residual) t = _mm256_add_ps(t, _mm256_loadu_ps(residual + j));
            _mm256_storeu_ps(v + j, t);
        }
    } else {
        qn_gather(x, len, residual, v);
    }
    for (size_t j = 0; j < FT_QK; j += 8) {
        const __m256 t = _mm256_loadu_ps(v + j);
        bad = _mm256_add_ps(bad, _mm256_mul_ps(t, zero)); /* NaN in a lane: an Inf or NaN input */
        amax = _mm256_max_ps(amax, _mm256_and_ps(t, absmask));
    }
    if (_mm256_movemask_ps(_mm256_cmp_ps(bad, bad, _CMP_UNORD_Q))) return FT_ERR_NONFINITE;
    float lanes[8], m = 0.0f;
    _mm256_storeu_ps(lanes, amax);
    for (int k = 0; k < 8; k++) if (lanes[k] > m) m = lanes[k];
    float d = 0.0f, id = 0.0f;
    if (m >= FT_Q8_MIN_AMAX) {
        d = m / qmax;
        id = 1.0f / d;
    }
    memcpy(out, &d, sizeof d);
    uint8_t *qs = out + sizeof(float);
    const __m256 vid = _mm256_set1_ps(id), vd = _mm256_set1_ps(d), hi = _mm256_set1_ps(qmax), lo = _mm256_set1_ps(-qmax);
    const __m256i vzero = _mm256_set1_epi32(lowbit_zero(fmt)), step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    float *r = residual;
    if (residual && len < FT_QK) r = rtail;
    for (size_t g = 0; g < FT_QK; g += 32) { /* 32 values: 16 bytes of 4-bit, 8 of 2-bit codes */
        __m256i c[4];
        for (int k = 0; k < 4; k++) {
            const size_t j = g + 8 * (size_t)k;
            const __m256 vv = _mm256_loadu_ps(v + j);
            __m256 t = _mm256_mul_ps(vv, vid);
            if (rounding == FT_ROUND_STOCHASTIC) {
                const __m256i i = _mm256_add_epi32(_mm256_set1_epi32((int)(i0 + (uint32_t)j)), step);
                const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hash_avx2(i, key), 8)),
                                               _mm256_set1_ps(0x1p-24f));
                t = _mm256_floor_ps(_mm256_add_ps(t, u));
            } else {
                t = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            }
            t = _mm256_max_ps(_mm256_min_ps(t, hi), lo);
            if (r) _mm256_storeu_ps(r + j, _mm256_sub_ps(vv, _mm256_mul_ps(t, vd)));
            c[k] = _mm256_add_epi32(_mm256_cvtps_epi32(t), vzero);
        }
        /* 32 codes as bytes, in order (the packs interleave 128-bit lanes; the permute undoes it) */
        __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
        b = _mm256_permutevar8x32_epi32(b, order);
        if (!two_bit) {
            const __m256i w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001)); /* c0 + 16 c1 */
            const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0xD8);
            _mm_storeu_si128((__m128i *)(qs + g / 2), _mm256_castsi256_si128(p));
        } else {
            const __m256i w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x0401));        /* c0 + 4 c1 */
            const __m256i q = _mm256_madd_epi16(w, _mm256_set1_epi32(0x00100001));      /* + 16 (c2 + 4 c3) */
            __m256i p = _mm256_packus_epi16(_mm256_packs_epi32(q, q), _mm256_packs_epi32(q, q));
            p = _mm256_permutevar8x32_epi32(p, order);
            _mm_storel_epi64((__m128i *)(qs + g / 4), _mm256_castsi256_si128(p));
        }
    }
    if (residual && len < FT_QK) memcpy(residual, rtail, len * sizeof(float));
    return FT_OK;
}

FT_TARGET_AVX2 ft_status ft_quantize_lowbit_avx2(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual,
                                                 ft_rounding rounding, uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_avx2, qn_block_avx2, fmt, x, n, residual, rounding, seed, out);
}
FT_TARGET_AVX2 ft_status ft_lowbit_apply_avx2(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n,
                                              uint64_t seed, float weight, float *acc, int add) {
    return lowbit_apply(fmt, in, i0, n, seed, weight, acc, add);
}
FT_TARGET_AVX512 static inline __m512i hash_avx512(__m512i i, uint32_t key) {
    __m512i x = _mm512_add_epi32(_mm512_mullo_epi32(i, _mm512_set1_epi32((int)0x9E3779B1U)), _mm512_set1_epi32((int)key));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846ca68bU));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

FT_TARGET_AVX512 static ft_status qn_block_avx512(ft_lowbit_fmt fmt, const float *x, size_t len, float *residual,
                                                  ft_rounding rounding, uint32_t key, uint32_t i0, uint8_t *out) {
    const int two_bit = fmt == FT_FMT_Q2;
    const float qmax = lowbit_qmax(fmt);
    float v[FT_QK], rtail[FT_QK];
    __m512 bad = _mm512_setzero_ps(), amax = _mm512_setzero_ps();
    const __m512 zero = _mm512_setzero_ps();
    if (len == FT_QK) {
        for (size_t j = 0; j < FT_QK; j += 16) {
            __m512 t = _mm512_loadu_ps(x + j);
            if (residual) t = _mm512_add_ps(t, _mm512_loadu_ps(residual + j));
            _mm512_storeu_ps(v + j, t);
        }
    } else {
        qn_gather(x, len, residual, v);
    }
    for (size_t j = 0; j < FT_QK; j += 16) {
        const __m512 t = _mm512_loadu_ps(v + j);
        bad = _mm512_add_ps(bad, _mm512_mul_ps(t, zero));
        amax = _mm512_max_ps(amax, _mm512_abs_ps(t));
    }
    if (_mm512_cmp_ps_mask(bad, bad, _CMP_UNORD_Q)) return FT_ERR_NONFINITE;
    const float m = _mm512_reduce_max_ps(amax); /* max: the same whatever the order */
    float d = 0.0f, id = 0.0f;
    if (m >= FT_Q8_MIN_AMAX) {
        d = m / qmax;
        id = 1.0f / d;
    }
    memcpy(out, &d, sizeof d);
    uint8_t *qs = out + sizeof(float);
    const __m512 vid = _mm512_set1_ps(id), vd = _mm512_set1_ps(d), hi = _mm512_set1_ps(qmax), lo = _mm512_set1_ps(-qmax);
    const __m512i vzero = _mm512_set1_epi32(lowbit_zero(fmt));
    const __m512i step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    float *r = residual;
    if (residual && len < FT_QK) r = rtail;
    for (size_t j = 0; j < FT_QK; j += 16) { /* 16 values: 8 bytes of 4-bit, 4 of 2-bit codes */
        const __m512 vv = _mm512_loadu_ps(v + j);
        __m512 t = _mm512_mul_ps(vv, vid);
        if (rounding == FT_ROUND_STOCHASTIC) {
            const __m512i i = _mm512_add_epi32(_mm512_set1_epi32((int)(i0 + (uint32_t)j)), step);
            const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(hash_avx512(i, key), 8)),
                                           _mm512_set1_ps(0x1p-24f));
            t = _mm512_roundscale_ps(_mm512_add_ps(t, u), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        } else {
            t = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        }
        t = _mm512_max_ps(_mm512_min_ps(t, hi), lo);
        if (r) _mm512_storeu_ps(r + j, _mm512_sub_ps(vv, _mm512_mul_ps(t, vd)));
        const __m128i b = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(t), vzero)); /* 16 codes */
        if (!two_bit) {
            const __m128i w = _mm_maddubs_epi16(b, _mm_set1_epi16(0x1001));
            _mm_storel_epi64((__m128i *)(qs + j / 2), _mm_packus_epi16(w, w));
        } else {
            const __m128i q = _mm_madd_epi16(_mm_maddubs_epi16(b, _mm_set1_epi16(0x0401)), _mm_set1_epi32(0x00100001));
            const int32_t p = _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(q, q), q));
            memcpy(qs + j / 4, &p, sizeof p);
        }
    }
    if (residual && len < FT_QK) memcpy(residual, rtail, len * sizeof(float));
    return FT_OK;
}

FT_TARGET_AVX512 ft_status ft_quantize_lowbit_avx512(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual,
                                                     ft_rounding rounding, uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_avx512, qn_block_avx512, fmt, x, n, residual, rounding, seed, out);
}
FT_TARGET_AVX512 ft_status ft_lowbit_apply_avx512(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n,
                                                  uint64_t seed, float weight, float *acc, int add) {
    return lowbit_apply(fmt, in, i0, n, seed, weight, acc, add);
}
#endif
