/*
 * dgauss.c — exact sampling of the discrete Gaussian N_Z(0, sigma^2), sigma^2 = num / den.
 *
 * Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020),
 * Algorithms 1-3: Bernoulli(exp(-gamma)) from Bernoulli(gamma / K) draws, a discrete Laplace of
 * integer scale t = floor(sigma) + 1 by rejection, and the discrete Gaussian by rejection from
 * that Laplace with acceptance exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)).
 *
 * Exact: every probability is a ratio of integers and every Bernoulli(a/b) compares a uniform
 * integer in [0, b) (by rejection from whole random bits) with a; no floating point anywhere.
 * Integers are 64-bit on the fast path and fall back to fixed 256-bit arithmetic (ft_bn) when
 * a product would not fit, so no parameter in range makes a rounding. The only inexactness is
 * a restart when a discrete-Laplace draw exceeds 2^62 in magnitude (it cannot be stored in an
 * int64): an event of probability below exp(-2^62 / t), i.e. never.
 *
 * Randomness comes only from the caller's byte source (a CSPRNG in production: the Python
 * binding reads the OS generator; tests pass a seeded stream). Timing depends on the samples
 * (rejection sampling): the noise is secret from the aggregator, which sees only masked sums,
 * not the device's timing per coordinate.
 */
#include "fedtiny.h"

#include <string.h>

/* ---- whole random bits from the caller's byte source ---------------------------------- */

typedef struct {
    ft_random_bytes_fn fill;
    void *ctx;
    uint64_t word;  /* unread bits, least significant first */
    int left;       /* how many bits of word are unread */
    int failed;
} bitsrc;

static int bits_refill(bitsrc *s) {
    uint8_t b[8];
    if (s->fill(s->ctx, b, sizeof b) != 0) {
        s->failed = 1;
        return -1;
    }
    s->word = 0;
    for (int i = 7; i >= 0; i--) s->word = (s->word << 8) | b[i];
    s->left = 64;
    return 0;
}

/* n in [0, 64] random bits in *out. */
static int bits_take(bitsrc *s, int n, uint64_t *out) {
    uint64_t v = 0;
    int got = 0;
    while (got < n) {
        if (s->left == 0 && bits_refill(s) != 0) return -1;
        int k = n - got < s->left ? n - got : s->left;
        uint64_t part = k == 64 ? s->word : (s->word & ((UINT64_C(1) << k) - 1));
        v |= part << got; /* got < n <= 64 */
        s->word = k == 64 ? 0 : s->word >> k;
        s->left -= k;
        got += k;
    }
    *out = v;
    return 0;
}

static int bitlen64(uint64_t x) {
    int n = 0;
    while (x) { n++; x >>= 1; }
    return n;
}

/* Uniform integer in [0, den), den >= 1: whole bits of den - 1's length, reject if >= den. */
static int uniform_below64(bitsrc *s, uint64_t den, uint64_t *out) {
    int n = bitlen64(den - 1);
    for (;;) {
        uint64_t v;
        if (bits_take(s, n, &v) != 0) return -1;
        if (v < den) { *out = v; return 0; }
    }
}

/* Bernoulli(num / den), 0 <= num <= den, den >= 1: 1, 0, or -1 if the source failed. */
static int bern64(bitsrc *s, uint64_t num, uint64_t den) {
    uint64_t u;
    if (uniform_below64(s, den, &u) != 0) return -1;
    return u < num;
}

/* ---- fixed-width big integers (256 bits, 32-bit limbs, least significant first) --------- */

#define BN_LIMBS 8
typedef struct { uint32_t w[BN_LIMBS]; } ft_bn;

static void bn_set64(ft_bn *a, uint64_t v) {
    memset(a, 0, sizeof *a);
    a->w[0] = (uint32_t)v;
    a->w[1] = (uint32_t)(v >> 32);
}

static int bn_is_zero(const ft_bn *a) {
    for (int i = 0; i < BN_LIMBS; i++) if (a->w[i]) return 0;
    return 1;
}

static int bn_cmp(const ft_bn *a, const ft_bn *b) {
    for (int i = BN_LIMBS - 1; i >= 0; i--)
        if (a->w[i] != b->w[i]) return a->w[i] < b->w[i] ? -1 : 1;
    return 0;
}

static void bn_sub(ft_bn *a, const ft_bn *b) { /* a -= b, a >= b */
    uint64_t borrow = 0;
    for (int i = 0; i < BN_LIMBS; i++) {
        uint64_t d = (uint64_t)a->w[i] - b->w[i] - borrow;
        a->w[i] = (uint32_t)d;
        borrow = (d >> 63) & 1;
    }
}

/* out = a * b; -1 if the product needs more than 256 bits. out may not alias a or b. */
static int bn_mul(ft_bn *out, const ft_bn *a, const ft_bn *b) {
    uint32_t t[2 * BN_LIMBS] = {0};
    for (int i = 0; i < BN_LIMBS; i++) {
        uint64_t carry = 0;
        for (int j = 0; j < BN_LIMBS; j++) {
            uint64_t cur = (uint64_t)a->w[i] * b->w[j] + t[i + j] + carry;
            t[i + j] = (uint32_t)cur;
            carry = cur >> 32;
        }
        t[i + BN_LIMBS] = (uint32_t)carry;
    }
    for (int i = BN_LIMBS; i < 2 * BN_LIMBS; i++) if (t[i]) return -1;
    memcpy(out->w, t, sizeof out->w);
    return 0;
}

static int bn_bitlen(const ft_bn *a) {
    for (int i = BN_LIMBS - 1; i >= 0; i--)
        if (a->w[i]) return 32 * i + bitlen64(a->w[i]);
    return 0;
}

static int bn_bit(const ft_bn *a, int i) { return (a->w[i / 32] >> (i % 32)) & 1; }

static void bn_shl1_or(ft_bn *a, int bit) {
    for (int i = BN_LIMBS - 1; i > 0; i--) a->w[i] = (a->w[i] << 1) | (a->w[i - 1] >> 31);
    a->w[0] = (a->w[0] << 1) | (uint32_t)bit;
}

/* q = n / d, r = n % d by schoolbook binary long division; d != 0. */
static void bn_divmod(const ft_bn *n, const ft_bn *d, ft_bn *q, ft_bn *r) {
    memset(q, 0, sizeof *q);
    memset(r, 0, sizeof *r);
    for (int i = bn_bitlen(n) - 1; i >= 0; i--) {
        bn_shl1_or(r, bn_bit(n, i));
        if (bn_cmp(r, d) >= 0) {
            bn_sub(r, d);
            q->w[i / 32] |= UINT32_C(1) << (i % 32);
        }
    }
}

static void bn_dec(ft_bn *a) { /* a -= 1, a > 0 */
    for (int i = 0; i < BN_LIMBS; i++) if (a->w[i]-- != 0) break;
}

static int uniform_below_bn(bitsrc *s, const ft_bn *den, ft_bn *out) {
    ft_bn top = *den;
    bn_dec(&top);
    int n = bn_bitlen(&top);
    for (;;) {
        memset(out, 0, sizeof *out);
        for (int i = 0; i < n; i += 32) {
            uint64_t v;
            if (bits_take(s, n - i < 32 ? n - i : 32, &v) != 0) return -1;
            out->w[i / 32] = (uint32_t)v;
        }
        if (bn_cmp(out, den) < 0) return 0;
    }
}

/* ---- Bernoulli(exp(-gamma)), gamma = num / den >= 0 (CKS 2020, Algorithm 1) ------------- */

/* gamma in [0, 1): K := 1; while Bernoulli(gamma / K) { K++ }; return K odd. */
static int bern_exp_frac64(bitsrc *s, uint64_t num, uint64_t den) {
    for (uint64_t k = 1;; k++) {
        if (den > UINT64_MAX / (k + 1)) { /* den * k would not fit: continue in 256 bits */
            ft_bn n, d, kk, dk, u;
            bn_set64(&n, num);
            bn_set64(&d, den);
            for (;; k++) {
                bn_set64(&kk, k);
                if (bn_mul(&dk, &d, &kk) != 0) return -1; /* k > 2^192: probability 1/k! */
                if (uniform_below_bn(s, &dk, &u) != 0) return -1;
                if (bn_cmp(&u, &n) >= 0) return (int)(k & 1);
            }
        }
        int a = bern64(s, num, den * k);
        if (a < 0) return -1;
        if (!a) return (int)(k & 1);
    }
}

static int bern_exp_frac_bn(bitsrc *s, const ft_bn *num, const ft_bn *den) {
    ft_bn kk, dk, u;
    for (uint64_t k = 1;; k++) {
        bn_set64(&kk, k);
        if (bn_mul(&dk, den, &kk) != 0) return -1;
        if (uniform_below_bn(s, &dk, &u) != 0) return -1;
        if (bn_cmp(&u, num) >= 0) return (int)(k & 1);
    }
}

static int bern_exp_minus_one(bitsrc *s) { return bern_exp_frac64(s, 1, 1); }

/* gamma = num / den, any size: floor(gamma) draws of Bernoulli(exp(-1)), then the fraction. */
static int bern_exp_bn(bitsrc *s, const ft_bn *num, const ft_bn *den) {
    ft_bn whole, frac;
    bn_divmod(num, den, &whole, &frac);
    while (!bn_is_zero(&whole)) {
        int a = bern_exp_minus_one(s);
        if (a <= 0) return a;
        bn_dec(&whole);
    }
    return bern_exp_frac_bn(s, &frac, den);
}

static int bern_exp64(bitsrc *s, uint64_t num, uint64_t den) {
    for (uint64_t whole = num / den; whole > 0; whole--) {
        int a = bern_exp_minus_one(s);
        if (a <= 0) return a;
    }
    return bern_exp_frac64(s, num % den, den);
}

/* Note on bern_exp_frac64 with num = den = 1 (exp(-1)): gamma = 1 is allowed by Algorithm 1
 * (gamma in [0, 1]); Bernoulli(1 / 1) is always 1, so K reaches 2 before the first real draw. */

/* ---- discrete Laplace of scale t (CKS 2020, Algorithm 2 with s / t = 1 / t) ------------- */

#define DLAP_MAX (INT64_C(1) << 62)

static int dlaplace(bitsrc *s, uint64_t t, int64_t *out) {
    for (;;) {
        uint64_t u;
        if (uniform_below64(s, t, &u) != 0) return -1;
        int d = bern_exp64(s, u, t);
        if (d < 0) return -1;
        if (!d) continue;
        uint64_t v = 0;
        for (;;) {
            int a = bern_exp_minus_one(s);
            if (a < 0) return -1;
            if (!a) break;
            v++;
        }
        if (v > (uint64_t)DLAP_MAX / t) continue; /* |X| would not fit: probability < exp(-2^62/t) */
        uint64_t x = u + t * v;
        if (x > (uint64_t)DLAP_MAX) continue;
        uint64_t y;
        if (bits_take(s, 1, &y) != 0) return -1;
        if (y && x == 0) continue;
        *out = y ? -(int64_t)x : (int64_t)x;
        return 0;
    }
}

static uint64_t isqrt64(uint64_t x) {
    uint64_t r = 0;
    for (int b = 31; b >= 0; b--) {
        uint64_t c = r | (UINT64_C(1) << b);
        if (c <= x / c) r = c;
    }
    return r;
}

/* ---- discrete Gaussian (CKS 2020, Algorithm 3) ------------------------------------------ */

ft_status ft_dgauss_s64(int64_t *out, size_t n, uint64_t sigma2_num, uint64_t sigma2_den,
                        ft_random_bytes_fn random_bytes, void *ctx) {
    if ((n && !out) || !random_bytes || sigma2_num == 0 || sigma2_den == 0 ||
        sigma2_num > FT_DGAUSS_MAX_NUM || sigma2_den > FT_DGAUSS_MAX_DEN)
        return FT_ERR_ARG;
    bitsrc s = {random_bytes, ctx, 0, 0, 0};
    const uint64_t a = sigma2_num, b = sigma2_den;
    const uint64_t t = isqrt64(a / b) + 1; /* floor(sigma) + 1: floor(sqrt(x)) = isqrt(floor(x)) */
    /* gamma = (|Y| - sigma^2 / t)^2 / (2 sigma^2) = (|Y| t b - a)^2 / (2 a b t^2) = N / D. */
    ft_bn A, B, T, ab, abt, D, two;
    bn_set64(&A, a);
    bn_set64(&B, b);
    bn_set64(&T, t);
    bn_set64(&two, 2);
    bn_mul(&ab, &A, &B);
    bn_mul(&abt, &ab, &T);
    bn_mul(&ab, &abt, &T);
    bn_mul(&D, &ab, &two); /* < 2^(1 + 40 + 24 + 2*21): fits */
    const int d_small = bn_bitlen(&D) <= 64;
    const uint64_t d64 = d_small ? ((uint64_t)D.w[1] << 32 | D.w[0]) : 0;
    const uint64_t tb = t * b; /* < 2^21 * 2^24 */
    for (size_t i = 0; i < n; i++) {
        for (;;) {
            int64_t y;
            if (dlaplace(&s, t, &y) != 0) return FT_ERR_RNG;
            uint64_t ay = y < 0 ? (uint64_t)(-y) : (uint64_t)y;
            int c;
            if (d_small && ay <= UINT64_MAX / tb) {               /* 64-bit path: |Y| t b fits */
                uint64_t p = ay * tb;
                uint64_t x = p >= a ? p - a : a - p;
                if (x < (UINT64_C(1) << 32)) {
                    c = bern_exp64(&s, x * x, d64);
                    if (c < 0) return FT_ERR_RNG;
                    if (c) { out[i] = y; break; }
                    continue;
                }
            }
            ft_bn Y, P, X, N;
            bn_set64(&Y, ay);
            bn_mul(&P, &Y, &T);
            bn_mul(&X, &P, &B);                                   /* < 2^(62 + 21 + 24) */
            if (bn_cmp(&X, &A) >= 0) bn_sub(&X, &A);
            else { ft_bn tmp = A; bn_sub(&tmp, &X); X = tmp; }
            if (bn_mul(&N, &X, &X) != 0) return FT_ERR_ARG;       /* < 2^214: cannot happen */
            c = bern_exp_bn(&s, &N, &D);
            if (c < 0) return FT_ERR_RNG;
            if (c) { out[i] = y; break; }
        }
    }
    return s.failed ? FT_ERR_RNG : FT_OK;
}
