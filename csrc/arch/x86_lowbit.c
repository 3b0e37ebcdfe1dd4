/* x86_lowbit.c — the sub-byte codecs under AVX2 and AVX-512: the one body of
 * codec_lowbit_body.h compiled under each target attribute (the compiler vectorizes what it can
 * without changing a result), with this file's fast Walsh-Hadamard transform. Each FWHT stage does the
 * reference's a + b, a - b on the same pairs (no reassociation), so the result is bit-identical:
 * the stages whose pairs lie a vector apart run in vector registers, the first few (pairs inside
 * one vector) are the reference's scalar loops. */
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
FT_TARGET_AVX2 ft_status ft_quantize_lowbit_avx2(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual,
                                                 ft_rounding rounding, uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_avx2, fmt, x, n, residual, rounding, seed, out);
}
FT_TARGET_AVX2 ft_status ft_lowbit_apply_avx2(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n,
                                              uint64_t seed, float weight, float *acc, int add) {
    return lowbit_apply(fmt, in, i0, n, seed, weight, acc, add);
}
FT_TARGET_AVX512 ft_status ft_quantize_lowbit_avx512(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual,
                                                     ft_rounding rounding, uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_avx512, fmt, x, n, residual, rounding, seed, out);
}
FT_TARGET_AVX512 ft_status ft_lowbit_apply_avx512(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n,
                                                  uint64_t seed, float weight, float *acc, int add) {
    return lowbit_apply(fmt, in, i0, n, seed, weight, acc, add);
}
#endif
