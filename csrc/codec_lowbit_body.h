/* codec_lowbit_body.h — the one definition of the sub-byte codecs (the spec: read with
 * csrc/codec_lowbit_ref.c's comment). Every path instantiates these bodies: codec_lowbit_ref.c as
 * the scalar reference, csrc/arch/ under its target attribute, where the compiler vectorizes what
 * it can without changing a result (-ffp-contract=off, no reassociation), as FT_SGD_BODY does.
 * Included by kernel sources only. */
#ifndef FT_CODEC_LOWBIT_BODY_H
#define FT_CODEC_LOWBIT_BODY_H

#include <math.h>
#include <string.h>

#include "ft_internal.h"

#define FT_LB_INLINE static inline __attribute__((always_inline))

FT_LB_INLINE int lowbit_bits(ft_lowbit_fmt fmt) { return fmt == FT_FMT_Q4 ? 4 : fmt == FT_FMT_Q2 ? 2 : 1; }
/* Largest |q| of the grid: the scale is amax / qmax. */
FT_LB_INLINE float lowbit_qmax(ft_lowbit_fmt fmt) { return fmt == FT_FMT_Q4 ? 7.0f : 1.0f; }
/* The code of q = 0: q = code - zero. */
FT_LB_INLINE int lowbit_zero(ft_lowbit_fmt fmt) { return fmt == FT_FMT_Q4 ? 8 : 1; }

FT_LB_INLINE float lowbit_d(const uint8_t *block) {
    float d;
    memcpy(&d, block, sizeof d);
    return d;
}

FT_LB_INLINE int lowbit_code(const uint8_t *qs, size_t j, int bits) {
    const size_t per = 8 / (size_t)bits;
    return (qs[j / per] >> ((j % per) * (size_t)bits)) & ((1 << bits) - 1);
}

/* ---- q4 / q2 -------------------------------------------------------------------------- */

FT_LB_INLINE ft_status qn_quantize_block(ft_lowbit_fmt fmt, const float *x, size_t len, float *residual,
                                   ft_rounding rounding, uint32_t key, uint32_t i0, uint8_t *out) {
    const int bits = lowbit_bits(fmt), zero = lowbit_zero(fmt);
    const float qmax = lowbit_qmax(fmt);
    float v[FT_QK];
    float amax = 0.0f, nonfinite = 0.0f;
    for (size_t j = 0; j < len; j++) {
        v[j] = residual ? x[j] + residual[j] : x[j];
        nonfinite += v[j] * 0.0f;
        const float a = fabsf(v[j]);
        if (a > amax) amax = a;
    }
    if (nonfinite != 0.0f || nonfinite != nonfinite) return FT_ERR_NONFINITE;
    float d = 0.0f, id = 0.0f;
    if (amax >= FT_Q8_MIN_AMAX) {
        d = amax / qmax;
        id = 1.0f / d;
    }
    memcpy(out, &d, sizeof d);
    uint8_t *qs = out + sizeof(float);
    const size_t per = 8 / (size_t)bits;
    memset(qs, 0, FT_QK / per);
    for (size_t j = 0; j < FT_QK; j++) {
        float t = 0.0f;
        if (j < len) {
            t = v[j] * id;
            if (rounding == FT_ROUND_STOCHASTIC)
                t = floorf(t + ft_rng_u01(i0 + (uint32_t)j, key));
            else
                t = nearbyintf(t);
            if (t > qmax) t = qmax;
            if (t < -qmax) t = -qmax;
            if (residual) residual[j] = v[j] - t * d;
        }
        const int code = (int)t + zero; /* padding values past len are q = 0 */
        qs[j / per] |= (uint8_t)(code << ((j % per) * (size_t)bits));
    }
    return FT_OK;
}

/* ---- r1: rotation + sign ------------------------------------------------------------- */

/* The key of the rotation's signs: apart from the stochastic-rounding stream of the same seed. */
FT_LB_INLINE uint32_t r1_key(uint64_t seed) { return ft_rng_key(seed) ^ 0xA511E9B3U; }
/* D_i: -1 when the top bit of the counter hash of parameter i is set. */
FT_LB_INLINE int r1_negate(uint32_t i, uint32_t key) { return (int)(ft_rng_bits(i, key) >> 31); }

FT_LB_INLINE void lowbit_fwht_scalar(float *v, size_t len) {
    for (size_t h = 1; h < len; h *= 2)
        for (size_t i = 0; i < len; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                const float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

/* H b for the block's bits, b_j = +1 (bit set) or -1: integers in [-FT_RK, FT_RK], exact in
 * float32 whatever the order of the additions, so this is the same on every path. */
FT_LB_INLINE void r1_unrotate_signs(const uint8_t *bits, float *y) {
    for (size_t j = 0; j < FT_RK; j++) y[j] = ((bits[j / 8] >> (j % 8)) & 1) ? 1.0f : -1.0f;
    lowbit_fwht_scalar(y, FT_RK); /* exact integers: the same bits in any order */
}

FT_LB_INLINE ft_status r1_quantize_block(void (*fwht)(float *, size_t), const float *x, size_t len, float *residual,
                                   uint32_t key, uint32_t i0, uint8_t *out) {
    float u[FT_RK];
    float nonfinite = 0.0f;
    for (size_t j = 0; j < FT_RK; j++) {
        float v = 0.0f;
        if (j < len) v = residual ? x[j] + residual[j] : x[j];
        nonfinite += v * 0.0f;
        u[j] = r1_negate(i0 + (uint32_t)j, key) ? -v : v;
    }
    if (nonfinite != 0.0f || nonfinite != nonfinite) return FT_ERR_NONFINITE;
    fwht(u, FT_RK);
    double l1 = 0.0, l2 = 0.0; /* in index order on every path */
    for (size_t j = 0; j < FT_RK; j++) {
        l1 += fabs((double)u[j]);
        l2 += (double)u[j] * (double)u[j];
    }
    if (!isfinite(l2)) return FT_ERR_NONFINITE; /* H D v overflowed float32 */
    const float s = (l1 > 0.0) ? (float)(l2 / ((double)FT_RK * l1)) : 0.0f;
    memcpy(out, &s, sizeof s);
    uint8_t *bits = out + sizeof(float);
    memset(bits, 0, FT_RK / 8);
    for (size_t j = 0; j < FT_RK; j++)
        if (u[j] >= 0.0f) bits[j / 8] |= (uint8_t)(1u << (j % 8));
    if (residual) {
        r1_unrotate_signs(bits, u);
        for (size_t j = 0; j < len; j++) {
            const float xh = s * u[j];
            residual[j] = (x[j] + residual[j]) - (r1_negate(i0 + (uint32_t)j, key) ? -xh : xh);
        }
    }
    return FT_OK;
}

/* ---- the public bodies, shared by every path (fwht is the path's transform, qn_block its
 * 4-bit / 2-bit packer of one block: qn_quantize_block, or a hand-written SIMD one that gives
 * the same bytes and residuals) ----------------------------------------------------------- */

typedef ft_status (*ft_qn_block_fn)(ft_lowbit_fmt fmt, const float *x, size_t len, float *residual,
                                    ft_rounding rounding, uint32_t key, uint32_t i0, uint8_t *out);

FT_LB_INLINE ft_status lowbit_quantize(void (*fwht)(float *, size_t), ft_qn_block_fn qn_block, ft_lowbit_fmt fmt,
                                       const float *x, size_t n, float *residual, ft_rounding rounding, uint64_t seed,
                                       uint8_t *out) {
    const size_t bv = ft_lowbit_block_values(fmt), bb = ft_lowbit_block_bytes(fmt);
    const uint32_t key = fmt == FT_FMT_R1 ? r1_key(seed) : ft_rng_key(seed);
    for (size_t b = 0; b * bv < n; b++) {
        const size_t i0 = b * bv, len = (n - i0 < bv) ? n - i0 : bv;
        float *r = residual ? residual + i0 : NULL;
        const ft_status st = fmt == FT_FMT_R1 ? r1_quantize_block(fwht, x + i0, len, r, key, (uint32_t)i0, out + b * bb)
                                              : qn_block(fmt, x + i0, len, r, rounding, key, (uint32_t)i0, out + b * bb);
        if (st != FT_OK) return st;
    }
    return FT_OK;
}

/* acc[i] (+)= (weight * d) * q_i over n values whose first is parameter i0 (a block boundary).
 * add = 0 writes the decoded values (weight 1), add = 1 accumulates. */
FT_LB_INLINE ft_status lowbit_apply(ft_lowbit_fmt fmt, const uint8_t *in, size_t i0, size_t n, uint64_t seed, float weight,
                              float *acc, int add) {
    const size_t bv = ft_lowbit_block_values(fmt), bb = ft_lowbit_block_bytes(fmt);
    const uint32_t key = r1_key(seed);
    float y[FT_RK];
    for (size_t b = 0; b * bv < n; b++) {
        const uint8_t *blk = in + b * bb;
        const size_t len = (n - b * bv < bv) ? n - b * bv : bv;
        const float s = add ? weight * lowbit_d(blk) : lowbit_d(blk);
        float *o = acc + b * bv;
        if (fmt == FT_FMT_R1) {
            r1_unrotate_signs(blk + sizeof(float), y);
            for (size_t j = 0; j < len; j++) {
                const float t = r1_negate((uint32_t)(i0 + b * bv + j), key) ? -y[j] : y[j];
                if (add) o[j] += s * t; else o[j] = s * t;
            }
        } else {
            const int bits = lowbit_bits(fmt), zero = lowbit_zero(fmt);
            for (size_t j = 0; j < len; j++) {
                const float q = (float)(lowbit_code(blk + sizeof(float), j, bits) - zero);
                if (add) o[j] += s * q; else o[j] = s * q;
            }
        }
    }
    return FT_OK;
}

#endif
