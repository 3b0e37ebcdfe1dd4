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
 * ft_chacha20.c is also compiled into the host kernels (csrc/, fedtiny._core): it is the one
 * ChaCha20 of the project, the scalar reference of the SIMD keystream generators there. It
 * depends on nothing else (not even ft_sha256.c).
 */
#ifndef FT_CRYPTO_H
#define FT_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "ft_wire.h"

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

#ifdef __cplusplus
}
#endif

#endif
