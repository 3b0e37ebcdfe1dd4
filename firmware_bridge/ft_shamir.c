/*
 * ft_shamir.c - Shamir secret sharing over GF(2^8), one polynomial per secret byte.
 *
 * GF(2^8) = GF(2)[x] / (x^8 + x^4 + x^3 + x + 1). Multiplication shifts and XORs under masks
 * (eight rounds whatever the operands), inversion is a^254 by squarings: no lookup table, whose
 * indices would depend on secret bytes, and no branch on a value. Only n, t, len and the shares'
 * x-coordinates (public by construction) steer loops and checks.
 */
#include "ft_crypto.h"

uint8_t ft_gf256_mul(uint8_t a, uint8_t b)
{
    uint32_t r = 0, x = a, y = b;
    unsigned i;
    for (i = 0; i < 8; i++) {
        r ^= x & (0u - (y & 1u));               /* add x when the low bit of y is set */
        y >>= 1;
        x = (x << 1) ^ (0x11Bu & (0u - (x >> 7))); /* x * X, reduced when bit 8 appears */
    }
    return (uint8_t)r;
}

uint8_t ft_gf256_inv(uint8_t a)
{
    /* a^254 = a^(2 + 4 + 8 + 16 + 32 + 64 + 128); 0 maps to 0 */
    uint8_t sq = ft_gf256_mul(a, a), r = sq;
    unsigned i;
    for (i = 2; i < 8; i++) {
        sq = ft_gf256_mul(sq, sq);
        r = ft_gf256_mul(r, sq);
    }
    return r;
}

int ft_shamir_split(const uint8_t *secret, size_t len, uint8_t n, uint8_t t, const uint8_t *random, uint8_t *shares)
{
    size_t b;
    unsigned i, k;
    uint8_t x, y;

    if (t < 1u || t > n || secret == NULL || shares == NULL || (t > 1u && random == NULL && len > 0)) {
        return FT_WIRE_ERR_ARG;
    }
    for (i = 0; i < n; i++) {
        uint8_t *share = shares + (size_t)i * (len + 1u);
        x = (uint8_t)(i + 1u);
        share[0] = x;
        for (b = 0; b < len; b++) {
            /* Horner: f(x) = (...(a_{t-1} x + a_{t-2}) x + ...) x + secret */
            y = 0;
            for (k = t - 1u; k >= 1u; k--) {
                y = (uint8_t)(ft_gf256_mul(y, x) ^ random[(size_t)(k - 1u) * len + b]);
            }
            share[1 + b] = (uint8_t)(ft_gf256_mul(y, x) ^ secret[b]);
        }
    }
    return FT_WIRE_OK;
}

int ft_shamir_combine(const uint8_t *shares, uint8_t t, size_t len, uint8_t *secret)
{
    size_t b;
    unsigned j, m;
    uint8_t xj, xm, num, den, l;

    if (t < 1u || shares == NULL || secret == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    for (j = 0; j < t; j++) { /* x-coordinates: nonzero and distinct */
        xj = shares[(size_t)j * (len + 1u)];
        if (xj == 0) {
            return FT_WIRE_ERR_ARG;
        }
        for (m = 0; m < j; m++) {
            if (shares[(size_t)m * (len + 1u)] == xj) {
                return FT_WIRE_ERR_ARG;
            }
        }
    }
    for (b = 0; b < len; b++) {
        secret[b] = 0;
    }
    for (j = 0; j < t; j++) {
        /* Lagrange basis at 0: l_j = prod_{m != j} x_m / (x_m - x_j), and - is XOR here */
        xj = shares[(size_t)j * (len + 1u)];
        num = 1;
        den = 1;
        for (m = 0; m < t; m++) {
            if (m == j) {
                continue;
            }
            xm = shares[(size_t)m * (len + 1u)];
            num = ft_gf256_mul(num, xm);
            den = ft_gf256_mul(den, (uint8_t)(xm ^ xj));
        }
        l = ft_gf256_mul(num, ft_gf256_inv(den));
        for (b = 0; b < len; b++) {
            secret[b] ^= ft_gf256_mul(l, shares[(size_t)j * (len + 1u) + 1u + b]);
        }
    }
    return FT_WIRE_OK;
}
