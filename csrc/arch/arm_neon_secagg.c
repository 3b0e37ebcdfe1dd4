/* arm_neon_secagg.c — NEON ChaCha20 keystream for the secure-aggregation kernels: 4 blocks per
 * pass, one block per 32-bit lane, then a 4 x 4 transpose per group of four state words.
 * Integer arithmetic only: bit-exact with the scalar reference (firmware_bridge/ft_chacha20.c). */
#include "ft_internal.h"

#if FT_ARCH_ARM64
#include <arm_neon.h>

#define ROTL(x, n) vsriq_n_u32(vshlq_n_u32(x, n), x, 32 - (n))
#define ROTL16(x) vreinterpretq_u32_u16(vrev32q_u16(vreinterpretq_u16_u32(x)))
#define QR(a, b, c, d)                                                               \
    do {                                                                             \
        a = vaddq_u32(a, b); d = veorq_u32(d, a); d = ROTL16(d);                     \
        c = vaddq_u32(c, d); b = veorq_u32(b, c); b = ROTL(b, 12);                   \
        a = vaddq_u32(a, b); d = veorq_u32(d, a); d = ROTL(d, 8);                    \
        c = vaddq_u32(c, d); b = veorq_u32(b, c); b = ROTL(b, 7);                    \
    } while (0)

/* a, b, c, d: words 4g..4g+3, lane j = block j -> out + 64 j + 16 g */
static inline void transpose_store(uint32x4_t a, uint32x4_t b, uint32x4_t c, uint32x4_t d, uint8_t *out) {
    const uint32x4x2_t ab = vtrnq_u32(a, b), cd = vtrnq_u32(c, d);
    vst1q_u8(out + 0 * 64, vreinterpretq_u8_u32(vcombine_u32(vget_low_u32(ab.val[0]), vget_low_u32(cd.val[0]))));
    vst1q_u8(out + 1 * 64, vreinterpretq_u8_u32(vcombine_u32(vget_low_u32(ab.val[1]), vget_low_u32(cd.val[1]))));
    vst1q_u8(out + 2 * 64, vreinterpretq_u8_u32(vcombine_u32(vget_high_u32(ab.val[0]), vget_high_u32(cd.val[0]))));
    vst1q_u8(out + 3 * 64, vreinterpretq_u8_u32(vcombine_u32(vget_high_u32(ab.val[1]), vget_high_u32(cd.val[1]))));
}

void ft_chacha20_blocks_neon(const uint32_t state[16], size_t nblocks, uint8_t *out) {
    static const uint32_t lanes[4] = {0, 1, 2, 3};
    uint32_t st[16];
    memcpy(st, state, sizeof st);
    size_t b = 0;
    for (; b + 4 <= nblocks; b += 4) {
        uint32x4_t in[16], x[16];
        for (int k = 0; k < 16; k++) in[k] = vdupq_n_u32(st[k]);
        in[12] = vaddq_u32(in[12], vld1q_u32(lanes));
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
        for (int k = 0; k < 16; k++) x[k] = vaddq_u32(x[k], in[k]);
        for (int g = 0; g < 4; g++) transpose_store(x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3], out + 64 * b + 16 * g);
        st[12] += 4;
    }
    if (b < nblocks) ft_chacha20_blocks_ref(st, nblocks - b, out + 64 * b);
}

#endif
