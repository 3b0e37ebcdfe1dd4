/*
 * ft_chacha20.c - ChaCha20 (RFC 8439 §2.1-2.4). The state is 16 little-endian words:
 * 4 constants, 8 key words, the block counter, 3 nonce words. A block is 20 rounds (10
 * column/diagonal double rounds) of add-rotate-xor on the words, then the input state is
 * added back. Only additions, XORs and fixed rotations: constant time by construction.
 */
#include "ft_crypto.h"

#include <string.h>

#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define QROUND(a, b, c, d)                                                                \
    do {                                                                                  \
        a += b; d ^= a; d = ROTL(d, 16);                                                  \
        c += d; b ^= c; b = ROTL(b, 12);                                                  \
        a += b; d ^= a; d = ROTL(d, 8);                                                   \
        c += d; b ^= c; b = ROTL(b, 7);                                                   \
    } while (0)

/* This file is also built without ft_sha256.c (csrc/), so it keeps its own wipes. Word stores:
 * the per-block wipe of the working state costs 16 stores, not 64. */
static void chacha_wipe_words(uint32_t *p, size_t n)
{
    volatile uint32_t *v = (volatile uint32_t *)p;
    while (n--) {
        *v++ = 0;
    }
}

static void chacha_wipe(uint8_t *p, size_t n)
{
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) {
        *v++ = 0;
    }
}

void ft_chacha20_init(uint32_t state[16], const uint8_t key[FT_CHACHA20_KEY_BYTES], uint32_t counter,
                      const uint8_t nonce[FT_CHACHA20_NONCE_BYTES])
{
    unsigned i;
    state[0] = 0x61707865u; /* "expa" */
    state[1] = 0x3320646eu; /* "nd 3" */
    state[2] = 0x79622d32u; /* "2-by" */
    state[3] = 0x6b206574u; /* "te k" */
    for (i = 0; i < 8; i++) {
        state[4 + i] = FT_GET_U32_LE(key, 4 * i);
    }
    state[12] = counter;
    for (i = 0; i < 3; i++) {
        state[13 + i] = FT_GET_U32_LE(nonce, 4 * i);
    }
}

void ft_chacha20_core(const uint32_t state[16], uint32_t out[16])
{
    uint32_t x[16];
    unsigned i;
    memcpy(x, state, sizeof x);
    for (i = 0; i < 10; i++) {
        QROUND(x[0], x[4], x[8], x[12]); /* columns */
        QROUND(x[1], x[5], x[9], x[13]);
        QROUND(x[2], x[6], x[10], x[14]);
        QROUND(x[3], x[7], x[11], x[15]);
        QROUND(x[0], x[5], x[10], x[15]); /* diagonals */
        QROUND(x[1], x[6], x[11], x[12]);
        QROUND(x[2], x[7], x[8], x[13]);
        QROUND(x[3], x[4], x[9], x[14]);
    }
    for (i = 0; i < 16; i++) {
        out[i] = x[i] + state[i];
    }
    chacha_wipe_words(x, 16);
}

void ft_chacha20_block(const uint8_t key[FT_CHACHA20_KEY_BYTES], uint32_t counter,
                       const uint8_t nonce[FT_CHACHA20_NONCE_BYTES], uint8_t out[FT_CHACHA20_BLOCK_BYTES])
{
    uint32_t state[16], ks[16];
    unsigned i;
    ft_chacha20_init(state, key, counter, nonce);
    ft_chacha20_core(state, ks);
    for (i = 0; i < 16; i++) {
        FT_PUT_U32_LE(ks[i], out, 4 * i);
    }
    chacha_wipe_words(state, 16);
    chacha_wipe_words(ks, 16);
}

int ft_chacha20_xor(const uint8_t key[FT_CHACHA20_KEY_BYTES], uint32_t counter,
                    const uint8_t nonce[FT_CHACHA20_NONCE_BYTES], const uint8_t *in, uint8_t *out, size_t len)
{
    uint32_t state[16], ks[16];
    uint8_t block[FT_CHACHA20_BLOCK_BYTES];
    size_t done = 0, take, i;
    uint64_t blocks_left = ((uint64_t)1 << 32) - counter;

    if (len == 0) {
        return FT_WIRE_OK;
    }
    if (key == NULL || nonce == NULL || out == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    /* ceil(len / 64) blocks must fit below 2^32 without the counter wrapping */
    if ((uint64_t)(len - 1u) / FT_CHACHA20_BLOCK_BYTES >= blocks_left) {
        return FT_WIRE_ERR_ARG;
    }
    ft_chacha20_init(state, key, counter, nonce);
    while (done < len) {
        ft_chacha20_core(state, ks);
        for (i = 0; i < 16; i++) {
            FT_PUT_U32_LE(ks[i], block, 4 * i);
        }
        take = len - done < FT_CHACHA20_BLOCK_BYTES ? len - done : FT_CHACHA20_BLOCK_BYTES;
        for (i = 0; i < take; i++) {
            out[done + i] = (uint8_t)((in != NULL ? in[done + i] : 0u) ^ block[i]);
        }
        done += take;
        state[12]++;
    }
    chacha_wipe_words(state, 16);
    chacha_wipe_words(ks, 16);
    chacha_wipe(block, sizeof block);
    return FT_WIRE_OK;
}
