/* x86_avx2_secagg.c — AVX2 ChaCha20 keystream (8 blocks per pass, one block per 32-bit lane) and the
 * 16-lane float64 sum of squares. Bit-exact with the scalar references in csrc/secagg.c: ChaCha20
 * is integer arithmetic, and the sum of squares adds exact products in the same lane order. */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

#define ROTL16(x) _mm256_shuffle_epi8(x, rot16)
#define ROTL8(x) _mm256_shuffle_epi8(x, rot8)
#define ROTL(x, n) _mm256_or_si256(_mm256_slli_epi32(x, n), _mm256_srli_epi32(x, 32 - (n)))
#define QR(a, b, c, d)                                                                        \
    do {                                                                                      \
        a = _mm256_add_epi32(a, b); d = _mm256_xor_si256(d, a); d = ROTL16(d);                \
        c = _mm256_add_epi32(c, d); b = _mm256_xor_si256(b, c); b = ROTL(b, 12);              \
        a = _mm256_add_epi32(a, b); d = _mm256_xor_si256(d, a); d = ROTL8(d);                 \
        c = _mm256_add_epi32(c, d); b = _mm256_xor_si256(b, c); b = ROTL(b, 7);               \
    } while (0)

/* Rows r0..r7 (lane j = word of block j) to blocks: out + 64*j + half gets words of block j. */
FT_TARGET_AVX2 static inline void transpose_store(__m256i r0, __m256i r1, __m256i r2, __m256i r3, __m256i r4,
                                                  __m256i r5, __m256i r6, __m256i r7, uint8_t *out) {
    const __m256i a0 = _mm256_unpacklo_epi32(r0, r1), a1 = _mm256_unpackhi_epi32(r0, r1);
    const __m256i a2 = _mm256_unpacklo_epi32(r2, r3), a3 = _mm256_unpackhi_epi32(r2, r3);
    const __m256i a4 = _mm256_unpacklo_epi32(r4, r5), a5 = _mm256_unpackhi_epi32(r4, r5);
    const __m256i a6 = _mm256_unpacklo_epi32(r6, r7), a7 = _mm256_unpackhi_epi32(r6, r7);
    const __m256i b0 = _mm256_unpacklo_epi64(a0, a2), b1 = _mm256_unpackhi_epi64(a0, a2);
    const __m256i b2 = _mm256_unpacklo_epi64(a1, a3), b3 = _mm256_unpackhi_epi64(a1, a3);
    const __m256i b4 = _mm256_unpacklo_epi64(a4, a6), b5 = _mm256_unpackhi_epi64(a4, a6);
    const __m256i b6 = _mm256_unpacklo_epi64(a5, a7), b7 = _mm256_unpackhi_epi64(a5, a7);
    _mm256_storeu_si256((__m256i *)(out + 0 * 64), _mm256_permute2x128_si256(b0, b4, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 1 * 64), _mm256_permute2x128_si256(b1, b5, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 2 * 64), _mm256_permute2x128_si256(b2, b6, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 3 * 64), _mm256_permute2x128_si256(b3, b7, 0x20));
    _mm256_storeu_si256((__m256i *)(out + 4 * 64), _mm256_permute2x128_si256(b0, b4, 0x31));
    _mm256_storeu_si256((__m256i *)(out + 5 * 64), _mm256_permute2x128_si256(b1, b5, 0x31));
    _mm256_storeu_si256((__m256i *)(out + 6 * 64), _mm256_permute2x128_si256(b2, b6, 0x31));
    _mm256_storeu_si256((__m256i *)(out + 7 * 64), _mm256_permute2x128_si256(b3, b7, 0x31));
}

FT_TARGET_AVX2 void ft_chacha20_blocks_avx2(const uint32_t state[16], size_t nblocks, uint8_t *out) {
    const __m256i rot16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
                                           2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    const __m256i rot8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
                                          3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
    uint32_t st[16];
    memcpy(st, state, sizeof st);
    size_t b = 0;
    for (; b + 8 <= nblocks; b += 8) {
        __m256i in[16], x[16];
        for (int k = 0; k < 16; k++) in[k] = _mm256_set1_epi32((int)st[k]);
        in[12] = _mm256_add_epi32(in[12], _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int k = 0; k < 16; k++) x[k] = in[k];
        for (int r = 0; r < 10; r++) {
            QR(x[0], x[4], x[8], x[12]);
            QR(x[1], x[5], x[9], x[13]);
            QR(x[2], x[6], x[10], x[14]);
            QR(x[3], x[7], x[11], x[15]);
            QR(x[0], x[5], x[10], x[15]);
            QR(x[1], x[6], x[11], x[12]);
            QR(x[2], x[7], x[8], x[13]);
            QR(x[3], x[4], x[9], x[14]);
        }
        for (int k = 0; k < 16; k++) x[k] = _mm256_add_epi32(x[k], in[k]);
        transpose_store(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], out + 64 * b);
        transpose_store(x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15], out + 64 * b + 32);
        st[12] += 8;
    }
    if (b < nblocks) ft_chacha20_blocks_ref(st, nblocks - b, out + 64 * b);
}

FT_TARGET_AVX2 double ft_l2sq_f32_avx2(const float *x, size_t n) {
    /* acc0..acc3 hold lanes 0-3, 4-7, 8-11, 12-15 of the reference */
    __m256d acc0 = _mm256_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), v1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        const __m256d v2 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 8)), v3 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 12));
        acc0 = _mm256_add_pd(acc0, _mm256_mul_pd(v0, v0));
        acc1 = _mm256_add_pd(acc1, _mm256_mul_pd(v1, v1));
        acc2 = _mm256_add_pd(acc2, _mm256_mul_pd(v2, v2));
        acc3 = _mm256_add_pd(acc3, _mm256_mul_pd(v3, v3));
    }
    double lane[16];
    _mm256_storeu_pd(lane, acc0);
    _mm256_storeu_pd(lane + 4, acc1);
    _mm256_storeu_pd(lane + 8, acc2);
    _mm256_storeu_pd(lane + 12, acc3);
    for (; i < n; i++) lane[i % 16] += (double)x[i] * (double)x[i];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) lane[j] += lane[j + w];
    return lane[0];
}

/* acc = (acc + x) & mask, 8 lanes: integer, the reference's result exactly. */
FT_TARGET_AVX2 void ft_add_mod_u32_avx2(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask) {
    const __m256i m = _mm256_set1_epi32((int)mask);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(acc + i));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(x + i));
        _mm256_storeu_si256((__m256i *)(acc + i), _mm256_and_si256(_mm256_add_epi32(a, b), m));
    }
    ft_add_mod_u32_body_ref(acc + i, x + i, n - i, mask);
}

/* centered c by shift left then arithmetic shift right (ft_centered_u32), c * scale in float64 (the
 * same IEEE product), rounded to float32 to nearest (the C cast): the reference's bits. */
FT_TARGET_AVX2 void ft_decode_mod_u32_avx2(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out) {
    const __m128i sh = _mm_cvtsi32_si128((int)shift);
    const __m256d s = _mm256_set1_pd(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(sum + i));
        v = _mm256_sra_epi32(_mm256_sll_epi32(v, sh), sh);
        const __m256d lo = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(v)), s);
        const __m256d hi = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1)), s);
        _mm_storeu_ps(out + i, _mm256_cvtpd_ps(lo));
        _mm_storeu_ps(out + i + 4, _mm256_cvtpd_ps(hi));
    }
    ft_decode_mod_u32_body_ref(sum + i, n - i, shift, scale, out + i);
}

#endif
