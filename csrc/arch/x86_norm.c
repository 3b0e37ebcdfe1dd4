/* x86_norm.c — AVX2 and AVX-512 bodies of ft_sumsq_q8: the per-block integer sum of q^2 in
 * vector registers (sign-extend to int16, madd to int32: exact), the float64 sum over blocks in
 * order through the reference's ft_q8_block_term, so every path is bit-identical to norm_ref.c. */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

FT_TARGET_AVX2 static inline uint32_t block_sumsq_avx2(const ft_block_q8 *b) {
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < FT_QK; j += 16) {
        const __m256i q = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b->qs + j)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(q, q));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(s);
}

FT_TARGET_AVX2 ft_status ft_sumsq_q8_avx2(const ft_block_q8 *in, size_t n, double *out) {
    const size_t nfull = n / FT_QK;
    double acc = 0.0;
    for (size_t b = 0; b < nfull; b++) acc += ft_q8_block_term(&in[b], block_sumsq_avx2(&in[b]));
    if (nfull * FT_QK < n) acc += ft_q8_block_term(&in[nfull], ft_q8_block_sumsq_ref(&in[nfull], n - nfull * FT_QK));
    *out = acc;
    return FT_OK;
}

FT_TARGET_AVX512 static inline uint32_t block_sumsq_avx512(const ft_block_q8 *b) {
    __m512i acc = _mm512_setzero_si512();
    for (int j = 0; j < FT_QK; j += 32) {
        const __m512i q = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b->qs + j)));
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(q, q));
    }
    return (uint32_t)_mm512_reduce_add_epi32(acc);
}

FT_TARGET_AVX512 ft_status ft_sumsq_q8_avx512(const ft_block_q8 *in, size_t n, double *out) {
    const size_t nfull = n / FT_QK;
    double acc = 0.0;
    for (size_t b = 0; b < nfull; b++) acc += ft_q8_block_term(&in[b], block_sumsq_avx512(&in[b]));
    if (nfull * FT_QK < n) acc += ft_q8_block_term(&in[nfull], ft_q8_block_sumsq_ref(&in[nfull], n - nfull * FT_QK));
    *out = acc;
    return FT_OK;
}
#endif
