/*
 * ft_crypto.h - the cryptography of secure aggregation (SecAgg+, docs/secagg.md) for
 * microcontrollers, in portable C99: ChaCha20 (RFC 8439 §2.3-2.4), Poly1305 and the
 * ChaCha20-Poly1305 AEAD (RFC 8439 §2.5, §2.8), HKDF-SHA256 (RFC 5869, on ft_wire.h's HMAC),
 * X25519 (RFC 7748) and Shamir secret sharing over GF(2^8).
 *
 * Rules the code keeps (as ft_wire.h): no malloc, no stdio, no mutable globals, caller-owned
 * buffers. Constant time: no branch and no memory index depends on a secret (key, scalar,
 * plaintext, share value, tag); only lengths, counts and share x-coordinates, which are
 * public, steer the control flow. Every secret intermediate is zeroized with ft_zeroize
 * before the function returns. Fallible functions return ft_wire_status and are
 * FT_WIRE_MUST_CHECK.
 *
 * Files: ft_chacha20.c, ft_hkdf.c, ft_poly1305.c (Poly1305 and the AEAD), ft_x25519.c, ft_shamir.c;
 * all but ft_chacha20.c use ft_sha256.c (HMAC, ft_zeroize, ft_ct_equal).
 *
 * ft_chacha20.c is also compiled into the host kernels (csrc/, fedtiny._core): it is the one
 * ChaCha20 of the project, the scalar reference of the SIMD keystream generators there. It
 * depends on nothing else (not even ft_sha256.c).
 */
#ifndef FT_CRYPTO_H
#define FT_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "ft_wire.h"

/* Little-endian word load and store, explicit byte by byte (no alignment or host-order
 * assumption), shared by ChaCha20 and Poly1305. */
#define FT_GET_U32_LE(b, i)                                                               \
    ((uint32_t)(b)[(i)] | ((uint32_t)(b)[(i) + 1] << 8) | ((uint32_t)(b)[(i) + 2] << 16) | \
     ((uint32_t)(b)[(i) + 3] << 24))
#define FT_PUT_U32_LE(n, b, i)                                                            \
    do {                                                                                  \
        (b)[(i)] = (uint8_t)(n);                                                          \
        (b)[(i) + 1] = (uint8_t)((n) >> 8);                                               \
        (b)[(i) + 2] = (uint8_t)((n) >> 16);                                              \
        (b)[(i) + 3] = (uint8_t)((n) >> 24);                                              \
    } while (0)

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ChaCha20 (RFC 8439 §2.3, §2.4): 32-byte key, 96-bit nonce, 32-bit block counter ------ */
#define FT_CHACHA20_KEY_BYTES 32u
#define FT_CHACHA20_NONCE_BYTES 12u
#define FT_CHACHA20_BLOCK_BYTES 64u

/* The 16 state words of block `counter`: constants, key, counter, nonce (little-endian loads). */
void ft_chacha20_init(uint32_t state[16], const uint8_t key[FT_CHACHA20_KEY_BYTES], uint32_t counter,
                      const uint8_t nonce[FT_CHACHA20_NONCE_BYTES]);
/* out = 20 rounds of `state` plus `state` (RFC 8439 §2.3.1), as 16 words. */
void ft_chacha20_core(const uint32_t state[16], uint32_t out[16]);
/* One 64-byte keystream block (RFC 8439 §2.3): the words of ft_chacha20_core, little-endian. */
void ft_chacha20_block(const uint8_t key[FT_CHACHA20_KEY_BYTES], uint32_t counter,
                       const uint8_t nonce[FT_CHACHA20_NONCE_BYTES], uint8_t out[FT_CHACHA20_BLOCK_BYTES]);
/* out[0..len) = in[0..len) XOR the keystream from block `counter` on (RFC 8439 §2.4); in == NULL
 * writes the keystream itself; in == out is allowed. FT_WIRE_ERR_ARG if the 32-bit block
 * counter would wrap (len > (2^32 - counter) * 64) or a pointer is NULL with len > 0. */
FT_WIRE_MUST_CHECK int ft_chacha20_xor(const uint8_t key[FT_CHACHA20_KEY_BYTES], uint32_t counter,
                                       const uint8_t nonce[FT_CHACHA20_NONCE_BYTES], const uint8_t *in,
                                       uint8_t *out, size_t len);

/* ---- HKDF-SHA256 (RFC 5869) on ft_hmac_sha256 ------------------------------------------------ */
#define FT_HKDF_SHA256_MAX_OKM (255u * 32u)

/* prk = HMAC-SHA256(salt, ikm); salt_len 0 (salt may be NULL) means 32 zero bytes. */
void ft_hkdf_sha256_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                            uint8_t prk[32]);
/* okm = T(1) | T(2) | ... truncated to okm_len; FT_WIRE_ERR_ARG if okm_len > 255 * 32. */
FT_WIRE_MUST_CHECK int ft_hkdf_sha256_expand(const uint8_t prk[32], const uint8_t *info, size_t info_len,
                                             uint8_t *okm, size_t okm_len);
/* extract then expand; the PRK is zeroized. */
FT_WIRE_MUST_CHECK int ft_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                                      const uint8_t *info, size_t info_len, uint8_t *okm, size_t okm_len);

/* ---- Poly1305 (RFC 8439 §2.5) and AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8) ------------------- */
#define FT_POLY1305_KEY_BYTES 32u
#define FT_POLY1305_TAG_BYTES 16u

/* The accumulator in five 26-bit limbs (products fit 64 bits on a 32-bit CPU). */
typedef struct {
    uint32_t r[5];   /* clamped r */
    uint32_t h[5];   /* accumulator */
    uint32_t pad[4]; /* s */
    uint8_t buf[16]; /* a partial block */
    size_t used;     /* bytes in buf */
} ft_poly1305_ctx;

void ft_poly1305_init(ft_poly1305_ctx *ctx, const uint8_t key[FT_POLY1305_KEY_BYTES]);
void ft_poly1305_update(ft_poly1305_ctx *ctx, const uint8_t *data, size_t len);
/* Writes the 16-byte tag and zeroizes the context. */
void ft_poly1305_finish(ft_poly1305_ctx *ctx, uint8_t tag[FT_POLY1305_TAG_BYTES]);
void ft_poly1305(const uint8_t key[FT_POLY1305_KEY_BYTES], const uint8_t *data, size_t len,
                 uint8_t tag[FT_POLY1305_TAG_BYTES]);

/* ct = ChaCha20(key, counter 1, nonce) XOR pt, tag = Poly1305 over aad | pad | ct | pad | lengths.
 * ct may equal pt. FT_WIRE_ERR_ARG for a NULL pointer with a nonzero length or len > 2^38 - 64. */
FT_WIRE_MUST_CHECK int ft_aead_chacha20poly1305_encrypt(const uint8_t key[32], const uint8_t nonce[12],
                                                        const uint8_t *aad, size_t aad_len, const uint8_t *pt,
                                                        size_t len, uint8_t *ct, uint8_t tag[16]);
/* Checks the tag (constant time) before decrypting anything: FT_WIRE_ERR_BAD_TAG leaves pt all zero.
 * pt may equal ct. */
FT_WIRE_MUST_CHECK int ft_aead_chacha20poly1305_decrypt(const uint8_t key[32], const uint8_t nonce[12],
                                                        const uint8_t *aad, size_t aad_len, const uint8_t *ct,
                                                        size_t len, const uint8_t tag[16], uint8_t *pt);

/* ---- X25519 (RFC 7748) ------------------------------------------------------------------------
 * Field elements in ten limbs of 26 and 25 bits (radix 2^25.5), products in uint64_t; Montgomery
 * ladder with a constant-time conditional swap; inversion by a fixed addition chain. */
#define FT_X25519_BYTES 32u

/* out = X25519(scalar, u): the scalar is clamped and the top bit of u masked as RFC 7748 says.
 * FT_WIRE_ERR_BAD_PAYLOAD if the result is all zero (u of small order: the peer's key is
 * worthless); out is then all zero. The check itself is constant time. */
FT_WIRE_MUST_CHECK int ft_x25519(uint8_t out[FT_X25519_BYTES], const uint8_t scalar[FT_X25519_BYTES],
                                 const uint8_t u[FT_X25519_BYTES]);
/* pub = X25519(secret, 9): the public key of a 32-byte random secret. */
void ft_x25519_public(uint8_t pub[FT_X25519_BYTES], const uint8_t secret[FT_X25519_BYTES]);

/* ---- Shamir secret sharing over GF(2^8), byte by byte ----------------------------------------
 * Field GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B); multiplication by shifts
 * and masks, inversion as a^254: no table, no secret-dependent branch. Byte b of the secret is the
 * constant term of its own random polynomial of degree t - 1; a share is
 *     [x (1 byte, 1..255)] [f_0(x), f_1(x), ..., f_{len-1}(x)]      (1 + len bytes)
 * Any t shares give the secret back (Lagrange interpolation at 0); t - 1 shares say nothing about
 * it (every secret is equally likely). */
#define FT_SHAMIR_MAX_SHARES 255u

/* shares = n shares of (1 + len) bytes, share i has x = i + 1. random = (t - 1) * len uniform
 * random bytes (the coefficients: random[(k - 1) * len + b] is the x^k coefficient of byte b);
 * the caller draws them from a hardware RNG or os.urandom and zeroizes them afterwards.
 * FT_WIRE_ERR_ARG unless 1 <= t <= n <= 255 and the pointers are set. */
FT_WIRE_MUST_CHECK int ft_shamir_split(const uint8_t *secret, size_t len, uint8_t n, uint8_t t,
                                       const uint8_t *random, uint8_t *shares);
/* secret (len bytes) from t shares of (1 + len) bytes, back to back, in any order.
 * FT_WIRE_ERR_ARG if t == 0, a share has x == 0, or two shares have the same x. With fewer than
 * the threshold's shares the output is a wrong secret, not an error: a share does not say t. */
FT_WIRE_MUST_CHECK int ft_shamir_combine(const uint8_t *shares, uint8_t t, size_t len, uint8_t *secret);
/* a * b and a^-1 (0^-1 = 0) in GF(2^8); exposed for tests. */
uint8_t ft_gf256_mul(uint8_t a, uint8_t b);
uint8_t ft_gf256_inv(uint8_t a);

#ifdef __cplusplus
}
#endif

#endif
