/* x86_avx512_secagg.c — AVX-512 sum of squares (two 8-lane float64 accumulators = the reference's 16
 * lanes) and ChaCha20 with 16 blocks per pass (vprold rotations; one block per lane, transposed with
 * 128-bit lane shuffles). Bit-exact with the scalar references in csrc/secagg.c. */
#include "ft_internal.h"

#if FT_ARCH_X86
#include <immintrin.h>

#define QR(a, b, c, d)                                                                                  \
    do {                                                                                                \
        a = _mm512_add_epi32(a, b); d = _mm512_xor_si512(d, a); d = _mm512_rol_epi32(d, 16);            \
        c = _mm512_add_epi32(c, d); b = _mm512_xor_si512(b, c); b = _mm512_rol_epi32(b, 12);            \
        a = _mm512_add_epi32(a, b); d = _mm512_xor_si512(d, a); d = _mm512_rol_epi32(d, 8);             \
        c = _mm512_add_epi32(c, d); b = _mm512_xor_si512(b, c); b = _mm512_rol_epi32(b, 7);             \
    } while (0)

/* x[k] lane j = word k of block j (16 x 16 words) -> out + 64*j = the 16 words of block j. */
FT_TARGET_AVX512 static inline void transpose16_store(__m512i x[16], uint8_t *out) {
    __m512i a[16], b[16], c[16];
    for (int k = 0; k < 16; k += 2) {           /* 32-bit interleave of word pairs */
        a[k] = _mm512_unpacklo_epi32(x[k], x[k + 1]);
        a[k + 1] = _mm512_unpackhi_epi32(x[k], x[k + 1]);
    }
    for (int k = 0; k < 16; k += 4) {           /* 64-bit interleave: 4 words of one block per 128 bits */
        b[k] = _mm512_unpacklo_epi64(a[k], a[k + 2]);
        b[k + 1] = _mm512_unpackhi_epi64(a[k], a[k + 2]);
        b[k + 2] = _mm512_unpacklo_epi64(a[k + 1], a[k + 3]);
        b[k + 3] = _mm512_unpackhi_epi64(a[k + 1], a[k + 3]);
    }
    /* b[4g + m] 128-bit lane L holds words 4g..4g+3 of block 4L + m. Gather the four word groups g
     * of one block: first pairs of groups (0,1) and (2,3), then the two halves. */
    for (int m = 0; m < 4; m++) {
        c[m] = _mm512_shuffle_i32x4(b[m], b[4 + m], 0x88);          /* L0,L2 of g0 | L0,L2 of g1 */
        c[4 + m] = _mm512_shuffle_i32x4(b[m], b[4 + m], 0xdd);      /* L1,L3 of g0 | L1,L3 of g1 */
        c[8 + m] = _mm512_shuffle_i32x4(b[8 + m], b[12 + m], 0x88); /* the same for g2, g3 */
        c[12 + m] = _mm512_shuffle_i32x4(b[8 + m], b[12 + m], 0xdd);
    }
    for (int m = 0; m < 4; m++) {
        /* c[m] = (g0 blk m, g0 blk 8+m, g1 blk m, g1 blk 8+m); c[8+m] likewise for g2, g3 */
        const __m512i lo = _mm512_shuffle_i32x4(c[m], c[8 + m], 0x88);  /* g0,g1,g2,g3 of blk m   */
        const __m512i hi = _mm512_shuffle_i32x4(c[m], c[8 + m], 0xdd);  /* g0,g1,g2,g3 of blk 8+m */
        const __m512i lo4 = _mm512_shuffle_i32x4(c[4 + m], c[12 + m], 0x88); /* blk 4+m  */
        const __m512i hi4 = _mm512_shuffle_i32x4(c[4 + m], c[12 + m], 0xdd); /* blk 12+m */
        _mm512_storeu_si512((void *)(out + 64 * m), lo);
        _mm512_storeu_si512((void *)(out + 64 * (8 + m)), hi);
        _mm512_storeu_si512((void *)(out + 64 * (4 + m)), lo4);
        _mm512_storeu_si512((void *)(out + 64 * (12 + m)), hi4);
    }
}

FT_TARGET_AVX512 void ft_chacha20_blocks_avx512(const uint32_t state[16], size_t nblocks, uint8_t *out) {
    uint32_t st[16];
    memcpy(st, state, sizeof st);
    size_t b = 0;
    for (; b + 16 <= nblocks; b += 16) {
        /* the input state is broadcast again for the final addition instead of being kept: 16 more
         * live registers would spill inside the rounds (32 zmm in all) */
        const __m512i ctr = _mm512_add_epi32(_mm512_set1_epi32((int)st[12]),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        __m512i x[16];
        for (int k = 0; k < 16; k++) x[k] = _mm512_set1_epi32((int)st[k]);
        x[12] = ctr;
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
        for (int k = 0; k < 16; k++) x[k] = _mm512_add_epi32(x[k], k == 12 ? ctr : _mm512_set1_epi32((int)st[k]));
        transpose16_store(x, out + 64 * b);
        st[12] += 16;
    }
    if (b < nblocks) ft_chacha20_blocks_avx2(st, nblocks - b, out + 64 * b); /* AVX2 then scalar tail */
}

FT_TARGET_AVX512 double ft_l2sq_f32_avx512(const float *x, size_t n) {
    __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0; /* lanes 0-7 and 8-15 of the reference */
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512d v0 = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), v1 = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        acc0 = _mm512_add_pd(acc0, _mm512_mul_pd(v0, v0));
        acc1 = _mm512_add_pd(acc1, _mm512_mul_pd(v1, v1));
    }
    double lane[16];
    _mm512_storeu_pd(lane, acc0);
    _mm512_storeu_pd(lane + 8, acc1);
    for (; i < n; i++) lane[i % 16] += (double)x[i] * (double)x[i];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) lane[j] += lane[j + w];
    return lane[0];
}

/* The AVX2 file's modular sum and decode, 16 lanes. */
FT_TARGET_AVX512 void ft_add_mod_u32_avx512(uint32_t *acc, const uint32_t *x, size_t n, uint32_t mask) {
    const __m512i m = _mm512_set1_epi32((int)mask);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i a = _mm512_loadu_si512((const void *)(acc + i));
        const __m512i b = _mm512_loadu_si512((const void *)(x + i));
        _mm512_storeu_si512((void *)(acc + i), _mm512_and_si512(_mm512_add_epi32(a, b), m));
    }
    ft_add_mod_u32_body_ref(acc + i, x + i, n - i, mask);
}

FT_TARGET_AVX512 void ft_decode_mod_u32_avx512(const uint32_t *sum, size_t n, unsigned shift, double scale, float *out) {
    const __m128i sh = _mm_cvtsi32_si128((int)shift);
    const __m512d s = _mm512_set1_pd(scale);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_loadu_si512((const void *)(sum + i));
        v = _mm512_sra_epi32(_mm512_sll_epi32(v, sh), sh);
        const __m512d lo = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)), s);
        const __m512d hi = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)), s);
        _mm256_storeu_ps(out + i, _mm512_cvtpd_ps(lo));
        _mm256_storeu_ps(out + i + 8, _mm512_cvtpd_ps(hi));
    }
    ft_decode_mod_u32_body_ref(sum + i, n - i, shift, scale, out + i);
}

#endif
