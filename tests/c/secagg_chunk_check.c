/* secagg_chunk_check.c - built with -DFT_SECAGG_CHUNK=<small> by tests/test_secagg_kernels.py: writes
 * the encode of a fixed vector (u16, 3 masks, offset 5) to stdout, which must equal the default
 * build's bytes (the chunk size is a memory/speed trade, never a change of result). */
#include <stdio.h>

#include "fedtiny.h"

#define N 3001

int main(void) {
    static float x[N];
    static uint16_t out[N];
    uint8_t rk[32], seeds[3 * 32];
    const int8_t signs[3] = {1, -1, 1};
    for (int i = 0; i < N; i++) x[i] = (float)((int)((i * 2654435761u) % 2001u) - 1000) * 1e-5f;
    for (int i = 0; i < 32; i++) rk[i] = (uint8_t)(i + 1);
    for (int i = 0; i < 96; i++) seeds[i] = (uint8_t)(3 * i + 7);
    if (ft_secagg_encode_u16(x, N, 5, 0.9f, 1e-4f, 3000, rk, seeds, signs, 3, out) != FT_OK) return 1;
    fwrite(out, sizeof out[0], N, stdout);
    return 0;
}
