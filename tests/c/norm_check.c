/* norm_check.c — ft_sumsq_q8 on the path this build chooses at run time (AVX2 / AVX-512
 * natively, NEON cross-built for aarch64 under qemu) against ft_sumsq_q8_ref, bit for bit, over
 * odd lengths, random int8 values including -128, random and maximal scales, padding that must
 * not count. Prints one line per failure and a summary; exit status = number of failures. */
#include <float.h>
#include <stdio.h>
#include <string.h>

#include "ft_internal.h"

#define MAX_N 4099
static ft_block_q8 blocks[(MAX_N + FT_QK - 1) / FT_QK];
static uint32_t st = 777u;
static uint32_t next(void) { st = st * 1664525u + 1013904223u; return st >> 8; }

int main(void) {
    const size_t lengths[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 127, 128, 129, 255, 257, 1023, 1025, 4099};
    int fails = 0;
    for (int scales = 0; scales < 2; scales++)
        for (size_t t = 0; t < sizeof lengths / sizeof lengths[0]; t++) {
            const size_t n = lengths[t];
            for (size_t b = 0; b < ft_q8_nblocks(n); b++) {
                const float d = scales ? FLT_MAX / 127.0f : (float)(next() % 100000) * 1e-7f;
                memcpy(&blocks[b].d, &d, sizeof d);
                for (int j = 0; j < FT_QK; j++) blocks[b].qs[j] = (int8_t)(next() & 0xFF);   /* -128..127 */
            }
            double ref = -1.0, got = -2.0;
            if (ft_sumsq_q8_ref(blocks, n, &ref) != FT_OK || ft_sumsq_q8(blocks, n, &got) != FT_OK ||
                memcmp(&ref, &got, sizeof ref) != 0) {
                printf("sumsq_q8 n=%zu scales=%d: %.17g vs ref %.17g\n", n, scales, got, ref);
                fails++;
            }
        }
    printf("%s: %d failure(s)\n", ft_simd_name(ft_simd_get()), fails);
    return fails;
}
