/* norm_ref.c — scalar reference of the update-norm kernels (the spec; x86_norm.c and arm_neon_norm.c follow it).
 *
 * The squared L2 norm of an int8 update is read from its blocks without decoding them:
 *   sum_b (d_b * d_b) * S_b,   S_b = sum_i q_i^2 over the block's values (an exact integer,
 *   at most FT_QK * 128^2 = 2^21), d_b * d_b exact in float64 (24-bit * 24-bit < 53 bits).
 * Blocks are added in order in float64, so a SIMD path that computes S_b in vector registers
 * and adds the blocks in the same order gives the same bits as this reference. The largest
 * legal scale (FLT_MAX/127) squares to about 7e72: the sum stays finite for any n < 2^32. */
#include "ft_internal.h"

uint32_t ft_q8_block_sumsq_ref(const ft_block_q8 *b, size_t len) {
    uint32_t s = 0;
    for (size_t j = 0; j < len; j++) s += (uint32_t)((int32_t)b->qs[j] * (int32_t)b->qs[j]);
    return s;
}

double ft_q8_block_term(const ft_block_q8 *b, uint32_t sumsq) {
    const double d = (double)ft_block_d(b);
    return (d * d) * (double)sumsq;
}

ft_status ft_sumsq_q8_ref(const ft_block_q8 *in, size_t n, double *out) {
    double acc = 0.0;
    for (size_t b = 0; b < ft_q8_nblocks(n); b++) {
        const size_t len = (n - b * FT_QK < FT_QK) ? n - b * FT_QK : FT_QK;
        acc += ft_q8_block_term(&in[b], ft_q8_block_sumsq_ref(&in[b], len));
    }
    *out = acc;
    return FT_OK;
}

/* Sequential float64 sum of x_i^2. Only the simulation's float32 updates use it, so it has
 * no SIMD body: every path runs this one (a vector version would need its own lane order). */
ft_status ft_sumsq_f32_ref(const float *x, size_t n, double *out) {
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double v = (double)x[i];
        acc += v * v;
    }
    *out = acc;
    return FT_OK;
}
