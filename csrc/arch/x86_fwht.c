/* x86_fwht.c — AVX2 and AVX-512 bodies of the fast Walsh-Hadamard transform. Each stage does the
 * reference's a + b, a - b on the same pairs (no reassociation), so the result is bit-identical:
 * the stages whose pairs lie a vector apart run in vector registers, the first few (pairs inside
 * one vector) are the reference's scalar loops. */
#include "ft_internal.h"

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
#endif
