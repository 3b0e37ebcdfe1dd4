/* lowbit_check.c — the sub-byte codecs on the path this CPU picks (NEON under qemu on aarch64)
 * against the scalar reference: the same bytes and residuals over odd lengths, every format and
 * rounding. Built and run by tests/test_codec_lowbit.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fedtiny.h"
int main(void) {
    static const size_t lens[] = {1, 2, 3, 5, 7, 127, 128, 129, 511, 512, 513, 1023, 1025, 20011};
    int bad = 0, checked = 0;
    /* the best path of this CPU: NEON on aarch64, AVX-512 or AVX2 on x86 */
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        size_t n = lens[li];
        float *x = malloc(n * 4), *r1 = malloc(n * 4), *r2 = malloc(n * 4);
        uint32_t s = 12345u + (uint32_t)n;
        for (size_t i = 0; i < n; i++) { s = s * 1664525u + 1013904223u; x[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 0.02f; r1[i] = r2[i] = x[i] * 0.1f; }
        ft_lowbit_fmt fmts[3] = {FT_FMT_Q4, FT_FMT_Q2, FT_FMT_R1};
        for (int f = 0; f < 3; f++) for (int rnd = 0; rnd < 2; rnd++) {
            size_t nb = ft_lowbit_nblocks(fmts[f], n) * ft_lowbit_block_bytes(fmts[f]);
            uint8_t *a = malloc(nb), *b = malloc(nb);
            memcpy(r2, r1, n * 4);
            float *ra = malloc(n * 4); memcpy(ra, r1, n * 4);
            ft_quantize_lowbit_ref(fmts[f], x, n, ra, (ft_rounding)rnd, 99, a);
            ft_quantize_lowbit(fmts[f], x, n, r2, (ft_rounding)rnd, 99, b);
            checked++;
            if (memcmp(a, b, nb) || memcmp(ra, r2, n * 4)) { bad++; printf("MISMATCH fmt %d n %zu rnd %d\n", fmts[f], n, rnd); }
            free(a); free(b); free(ra);
        }
        free(x); free(r1); free(r2);
    }
    printf("%s: %d cases, %d failure(s)\n", ft_simd_name(ft_simd_get()), checked, bad);
    return bad != 0;
}
