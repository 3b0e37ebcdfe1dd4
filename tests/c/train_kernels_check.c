/* train_kernels_check.c — every training-kernel path this build has (the SIMD one chosen at run
 * time: AVX2 / AVX-512 natively, NEON cross-built for aarch64 under qemu) against the reference:
 * GEMM over odd sizes, plain and transposed A, accumulate on/off; the SGD update bit-exact;
 * the transpose exact; the secure-aggregation ChaCha20 generator and float64 sum of squares
 * bit-exact. Prints one line per failure; exit status = number of failures. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ft_internal.h"

static uint32_t st = 12345u;
static float rnd(void) { st = st * 1664525u + 1013904223u; return (float)(st >> 8) * 0x1p-24f * 2.0f - 1.0f; }

static int check_gemm(size_t M, size_t N, size_t K, int ta, int acc) {
    const size_t ldb = N + 3, ldc = N + 1;
    float *A = malloc(sizeof(float) * (M * K + 1)), *B = malloc(sizeof(float) * (K * ldb + 1));
    float *C0 = malloc(sizeof(float) * (M * ldc + 1)), *C1 = malloc(sizeof(float) * (M * ldc + 1));
    for (size_t i = 0; i < M * K; i++) A[i] = rnd();
    for (size_t i = 0; i < K * ldb; i++) B[i] = rnd();
    for (size_t i = 0; i < M * ldc; i++) C0[i] = C1[i] = rnd();
    const ptrdiff_t rsa = ta ? 1 : (ptrdiff_t)K, csa = ta ? (ptrdiff_t)M : 1;
    ft_gemm_f32_ref(M, N, K, A, rsa, csa, B, ldb, C0, ldc, acc);
    ft_gemm_f32(M, N, K, A, rsa, csa, B, ldb, C1, ldc, acc);
    int bad = 0;
    for (size_t i = 0; i < M && !bad; i++)
        for (size_t j = 0; j < ldc; j++) {
            float m = 1.0f; /* tolerance scale: sum of |a*b| */
            for (size_t k = 0; j < N && k < K; k++) m += fabsf(A[i * rsa + k * csa] * B[k * ldb + j]);
            const float tol = j < N ? 1e-5f * m : 0.0f; /* the padding of C is never written */
            if (fabsf(C0[i * ldc + j] - C1[i * ldc + j]) > tol) {
                printf("gemm M=%zu N=%zu K=%zu ta=%d acc=%d: C[%zu][%zu] %g vs ref %g\n", M, N, K, ta, acc, i, j,
                       (double)C1[i * ldc + j], (double)C0[i * ldc + j]);
                bad = 1;
                break;
            }
        }
    free(A); free(B); free(C0); free(C1);
    return bad;
}

static int check_path(void) {
    const ft_train_kernel_table *t = ft_train_kernels();
    int fails = 0;
    const size_t sizes[][3] = {{1, 1, 1}, {1, 17, 3}, {5, 7, 9}, {8, 8, 1}, {9, 33, 31}, {13, 31, 257},
                               {10, 200, 300}, {64, 64, 80}, {3, 1023, 5}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int acc = 0; acc < 2; acc++) fails += check_gemm(sizes[s][0], sizes[s][1], sizes[s][2], ta, acc);
    const size_t n = 1031;
    float w0[1031], w1[1031], g[1031], v0[1031], v1[1031], wg[1031];
    for (size_t i = 0; i < n; i++) { w0[i] = w1[i] = rnd(); g[i] = rnd(); v0[i] = v1[i] = rnd(); wg[i] = rnd(); }
    ft_sgd_f32_ref(w0, g, v0, wg, n, 0.1f, 0.9f, 1e-3f, 0.01f);
    t->sgd_f32(w1, g, v1, wg, n, 0.1f, 0.9f, 1e-3f, 0.01f);
    if (memcmp(w0, w1, sizeof w0) || memcmp(v0, v1, sizeof v0)) { printf("sgd_f32 differs from the reference\n"); fails++; }
    float src[37 * 29], d0[37 * 29], d1[37 * 29];
    for (size_t i = 0; i < 37 * 29; i++) src[i] = rnd();
    ft_transpose_f32_ref(src, 37, 29, d0);
    t->transpose_f32(src, 37, 29, d1);
    if (memcmp(d0, d1, sizeof d0)) { printf("transpose_f32 differs from the reference\n"); fails++; }
    /* the secure-aggregation generator and sum of squares (csrc/secagg.c) */
    static uint8_t k0[64 * 41], k1[64 * 41];
    uint32_t state[16];
    for (size_t nb = 0; nb <= 41; nb++) {
        for (int k = 0; k < 16; k++) { st = st * 1664525u + 1013904223u; state[k] = st; }
        state[12] = nb == 41 ? 0xffffffffu - 40u : state[12] >> 1; /* up to the last counter */
        ft_chacha20_blocks_ref(state, nb, k0);
        ft_secagg_kernels()->chacha20_blocks(state, nb, k1);
        if (memcmp(k0, k1, 64 * nb)) { printf("chacha20_blocks differs from the reference at %zu blocks\n", nb); fails++; }
    }
    for (size_t n = 0; n < 300; n += 7) {
        if (ft_secagg_kernels()->l2sq_f32(src, n) != ft_l2sq_f32_ref(src, n)) { printf("l2sq_f32 differs at n=%zu\n", n); fails++; }
    }
    printf("%s: %d failure(s)\n", ft_simd_name(ft_simd_get()), fails);
    return fails;
}

/* ft_train_sgd_u8 against its definition: ft_train_sgd on the float32 array x * scale, bit for
 * bit (weights and loss), for a 64-33-10 MLP over 37 samples in batches of 10 (a short last batch). */
static int check_sgd_u8(float scale, int bits) {
    enum { N = 37, IN = 64, H = 33, OUT = 10, B = 10 };
    static const ft_layer layers[3] = {
        {FT_LAYER_DENSE, 1, 1, IN, 1, 1, H, 0, 0, IN * H, 0, 0, 0, 0},
        {FT_LAYER_RELU, 1, 1, H, 1, 1, H, 0, -1, -1, 0, 0, 0, 0},
        {FT_LAYER_DENSE, 1, 1, H, 1, 1, OUT, 0, IN * H + H, IN * H + H + H * OUT, 0, 0, 0, 0},
    };
    const ft_net net = {layers, 3, IN * H + H + H * OUT + OUT, B, 0u};
    const ft_sgd_hyper hp = {0.05f, 0.0f, 0.0f, 0.0f, 7u, 0u};
    const size_t na = ft_train_arena_floats(&net);
    uint8_t *xq = malloc(N * IN);
    float *xf = malloc(sizeof(float) * N * IN), *p0 = malloc(sizeof(float) * (size_t)net.n_params);
    float *p1 = malloc(sizeof(float) * (size_t)net.n_params), *p2 = malloc(sizeof(float) * (size_t)net.n_params);
    float *a0 = malloc(sizeof(float) * na), *a1 = malloc(sizeof(float) * na);
    int32_t y[N], idx[N];
    double l0 = 0.0, l1 = 0.0;
    int64_t s0, s1, t0, t1;
    int bad = 0;
    for (int i = 0; i < N * IN; i++) {
        xq[i] = (uint8_t)((st = st * 1664525u + 1013904223u) >> (32 - bits));
        xf[i] = (float)xq[i] * scale;
    }
    for (int i = 0; i < N; i++) { y[i] = i % OUT; idx[i] = (i * 11) % N; }
    for (int64_t i = 0; i < net.n_params; i++) p0[i] = 0.1f * rnd();
    if (ft_train_load(&net, p0, NULL, a0) != FT_OK || ft_train_load(&net, p0, NULL, a1) != FT_OK ||
        ft_train_sgd(&net, &hp, xf, y, N, idx, N, -1, a0, &l0, &s0, &t0) != FT_OK ||
        ft_train_sgd_u8(&net, &hp, xq, scale, y, N, idx, N, -1, a1, &l1, &s1, &t1) != FT_OK ||
        ft_train_store(&net, a0, p1) != FT_OK || ft_train_store(&net, a1, p2) != FT_OK) {
        printf("sgd_u8 scale=%g: a call failed\n", (double)scale);
        bad = 1;
    } else if (memcmp(p1, p2, sizeof(float) * (size_t)net.n_params) != 0 || l0 != l1 || s0 != s1 || t0 != t1 ||
               t0 != 4 || memcmp(p0, p1, sizeof(float) * (size_t)net.n_params) == 0) {
        printf("sgd_u8 scale=%g: differs from ft_train_sgd on x * scale (loss %.17g vs %.17g)\n", (double)scale, l1,
               l0);
        bad = 1;
    }
    /* a scale that is not a positive finite number is refused, nothing trained */
    if (ft_train_sgd_u8(&net, &hp, xq, 0.0f, y, N, idx, N, -1, a1, &l1, &s1, &t1) != FT_ERR_ARG ||
        ft_train_sgd_u8(&net, &hp, xq, NAN, y, N, idx, N, -1, a1, &l1, &s1, &t1) != FT_ERR_ARG ||
        ft_train_sgd_u8(&net, &hp, xq, INFINITY, y, N, idx, N, -1, a1, &l1, &s1, &t1) != FT_ERR_ARG) {
        printf("sgd_u8: a bad scale was accepted\n");
        bad = 1;
    }
    free(xq); free(xf); free(p0); free(p1); free(p2); free(a0); free(a1);
    return bad;
}

int main(void) {
    int fails = check_sgd_u8(1.0f / 16.0f, 5) + check_sgd_u8(1.0f / 255.0f, 8);
    for (int level = 1; level < FT_SIMD_COUNT; level++)
        if (ft_simd_set((ft_simd)level) == FT_OK) fails += check_path();
    return fails;
}
