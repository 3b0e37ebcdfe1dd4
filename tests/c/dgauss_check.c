/* dgauss_check.c — draws of ft_dgauss_s64 from a fixed byte stream (SplitMix64, little-endian),
 * printed one per line: the same stream must give the same draws on every platform and through
 * the Python binding (tests/test_privacy_portable.py).  Usage: dgauss_check SEED N NUM DEN */
#include <stdio.h>
#include <stdlib.h>

#include "fedtiny.h"

typedef struct { uint64_t state; } splitmix;

static uint64_t splitmix_next(splitmix *s) {
    uint64_t z = (s->state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Bytes in 8-byte little-endian words; a request is served from whole words (the binding asks
 * in 64 KiB chunks, the kernel in 8-byte reads: both multiples of 8). */
static int fill(void *ctx, uint8_t *out, size_t n) {
    if (n % 8) return -1;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = splitmix_next((splitmix *)ctx);
        for (int k = 0; k < 8; k++) out[i + (size_t)k] = (uint8_t)(w >> (8 * k));
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    splitmix s = {strtoull(argv[1], NULL, 10)};
    size_t n = (size_t)strtoull(argv[2], NULL, 10);
    int64_t *out = malloc(n * sizeof *out);
    if (!out) return 3;
    ft_status st = ft_dgauss_s64(out, n, strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10), fill, &s);
    if (st != FT_OK) { printf("status %d\n", (int)st); return 1; }
    for (size_t i = 0; i < n; i++) printf("%lld\n", (long long)out[i]);
    free(out);
    return 0;
}
