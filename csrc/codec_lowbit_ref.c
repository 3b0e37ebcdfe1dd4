/* codec_lowbit_ref.c — scalar reference of the sub-byte update codecs (the spec; docs/PROTOCOL.md
 * "Sub-byte updates"). Written for clarity, never tuned.
 *
 *   q4   FT_QK values per block, {float32 d; 4-bit codes}, value = d * (code - 8), code 1..15
 *   q2   FT_QK values per block, {float32 d; 2-bit codes}, value = d * (code - 1), code 0..2
 *   r1   FT_RK values per block after a seeded rotation u = H D v (H the unnormalized
 *        Walsh-Hadamard matrix, D random signs from (seed, parameter index)); one bit per value,
 *        sign(u); decode x = S * D H b with b = +-1 and S = ||u||^2 / (FT_RK ||u||_1), the
 *        DRIVE scale (Vargaftik et al. 2021) that makes the estimate unbiased over the rotation.
 * Codes pack little-endian within a byte: value j of a block sits at bits
 * (j % per_byte) * bits of byte j / per_byte. Code 0 of q4 and code 3 of q2 are never written
 * (the reader refuses them), so both grids are symmetric like the int8 codec's [-127, 127]. */
#include "codec_lowbit_body.h"

size_t ft_lowbit_block_values(ft_lowbit_fmt fmt) { return fmt == FT_FMT_R1 ? FT_RK : FT_QK; }

size_t ft_lowbit_block_bytes(ft_lowbit_fmt fmt) {
    switch (fmt) {
    case FT_FMT_Q4: return sizeof(ft_block_q4);
    case FT_FMT_Q2: return sizeof(ft_block_q2);
    case FT_FMT_R1: return sizeof(ft_block_r1);
    default: return 0;
    }
}

void ft_fwht_f32_ref(float *v, size_t len) { lowbit_fwht_scalar(v, len); }

ft_status ft_quantize_lowbit_ref(ft_lowbit_fmt fmt, const float *x, size_t n, float *residual, ft_rounding rounding,
                                 uint64_t seed, uint8_t *out) {
    return lowbit_quantize(ft_fwht_f32_ref, qn_quantize_block, fmt, x, n, residual, rounding, seed, out);
}

ft_status ft_lowbit_apply_ref(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n, uint64_t seed, float weight,
                              float *acc, int add) {
    return lowbit_apply(fmt, in, i0, n, seed, weight, acc, add);
}
