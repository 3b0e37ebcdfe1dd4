/* bench_fw_secagg_m4.c - instructions of one SecAgg+ round of the example firmware's device side
 * (example/fw_secagg.c) on a Cortex-M4F, counted as bench_m4.c counts them (qemu-system-arm -M
 * mps2-an386 -icount shift=0, SysTick at one tick per 40 instructions, calibrated).
 *
 * K + 1 devices run the whole round on the emulated M4 (complete graph, t = K/2 + 1), the
 * aggregator's relaying done here by hand with the payload layouts of docs/secagg.md; only
 * device 0's calls are counted. Checked on the M4: every stage returns OK, every share decrypts,
 * and the sum of all masked vectors minus the devices' self masks (their streams from b, which
 * the bench reads from the machines) is the sum of the grid vectors: the pairwise masks cancel.
 * The random source is a xorshift stream: a bench, not a key generator.
 *
 *   make -C firmware_bridge m4-bench-secagg */
#include <stdint.h>
#include <string.h>

#include "../../example/fw_secagg.h"

void semi_write0(const char *s);

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

#ifndef BENCH_K
#define BENCH_K 8
#endif
#define K BENCH_K
#define N (K + 1)
#define P 650 /* the example firmware's parameters (mlp:64-10) */

static uint32_t ticks_since(uint32_t start) { return (start - SYST_CVR) & 0xFFFFFFu; }

static void put_u(const char *label, uint32_t v, const char *unit) {
    char buf[160], digits[12];
    size_t n = 0, d = 0;
    while (*label) buf[n++] = *label++;
    do { digits[d++] = (char)('0' + v % 10u); v /= 10u; } while (v);
    while (d) buf[n++] = digits[--d];
    while (*unit) buf[n++] = *unit++;
    buf[n++] = '\n';
    buf[n] = 0;
    semi_write0(buf);
}

__attribute__((noinline)) static void spin(uint32_t n) {
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) : : "cc");
}

static uint32_t rng_state = 0x9E3779B9u;
static int xorshift_random(void *ctx, uint8_t *out, size_t n) {
    (void)ctx;
    while (n--) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        *out++ = (uint8_t)rng_state;
    }
    return 0;
}

static void put32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static fw_secagg dev[N];
static uint8_t keys[N][FW_SA_KEYS_OUT];
static uint8_t shares[N][FW_SA_SHARES_OUT];
static size_t shares_len[N];
static uint8_t msg[2048], out[2048];
static float delta[N][P];
static uint16_t masked[N][P];
static int failures;

static void expect(int ok, const char *what) {
    if (!ok) { semi_write0("WRONG ANSWER: "); semi_write0(what); semi_write0("\n"); failures++; }
}

__attribute__((noinline)) static int bench(void) {
    uint32_t t0, t, cal, x100, total = 0;
    size_t len, n_out;
    int d, v, st, i;
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u;
    t0 = SYST_CVR;
    spin(1000000u);
    cal = ticks_since(t0);
    x100 = (uint32_t)(200000000ull / cal);
    put_u("calibration: instructions per SysTick tick x100 = ", x100, "");
#define COUNTED(d, label, stmt)                                                              \
    do {                                                                                     \
        t0 = SYST_CVR;                                                                       \
        stmt;                                                                                \
        t = (uint32_t)((uint64_t)ticks_since(t0) * x100 / 100u);                             \
        if ((d) == 0) { put_u(label, t, " instructions"); total += t; }                      \
    } while (0)

    for (d = 0; d < N; d++) {
        fw_secagg_init(&dev[d], (uint32_t)d, xorshift_random, 0);
        for (i = 0; i < P; i++) delta[d][i] = (float)((i * 7 + d * 13) % 101 - 50) * 1e-4f;
    }
    /* SETUP: session, graph seed, n, k, t, min_survivors, bits, clip = 1.0, then the ids */
    memset(msg, 0, 56);
    for (i = 0; i < 32; i++) msg[i] = (uint8_t)(i * 29 + 1);
    msg[32] = N; msg[34] = K; msg[36] = K / 2 + 1; msg[38] = K / 2 + 2; msg[40] = 16;
    msg[55] = 0x3F; msg[54] = 0xF0; /* 1.0 as a little-endian double */
    for (d = 0; d < N; d++) put32(msg + 56 + 4 * d, (uint32_t)d);
    len = 56u + 4u * N;
    for (d = 0; d < N; d++) {
        COUNTED(d, "setup (2 key pairs, commitment): ", st = fw_secagg_setup(&dev[d], 1, msg, len, keys[d]));
        expect(st == 0, "setup");
    }
    for (d = 0; d < N; d++) { /* KEY_LIST: every other device's keys */
        len = 0;
        for (v = 0; v < N; v++) {
            if (v == d) continue;
            put32(msg + len, (uint32_t)v);
            memcpy(msg + len + 4, keys[v], 96);
            len += 100;
        }
        COUNTED(d, "key list -> shares (k agreements, 2 Shamir splits, k AEAD): ",
                st = fw_secagg_key_list(&dev[d], msg, len, shares[d], sizeof shares[d], &shares_len[d]));
        expect(st == 0, "key list");
    }
    for (d = 0; d < N; d++) { /* SHARE_LIST: the ciphertext each other device addressed to d */
        len = 0;
        for (v = 0; v < N; v++) {
            size_t e;
            if (v == d) continue;
            for (e = 0; e < shares_len[v]; e += 93)
                if (get32(shares[v] + e) == (uint32_t)d) {
                    put32(msg + len, (uint32_t)v);
                    memcpy(msg + len + 4, shares[v] + e + 4, 89);
                    len += 93;
                }
        }
        COUNTED(d, "share list (k decryptions, k agreements, k seeds): ", st = fw_secagg_share_list(&dev[d], msg, len));
        expect(st == 0 && dev[d].share_undecryptable == 0, "share list");
    }
    {
        static const uint8_t round_key[32] = {5};
        for (d = 0; d < N; d++) {
            COUNTED(d, "masked vector (clip, grid, k + 1 masks; 650 parameters): ",
                    st = fw_secagg_prepare(&dev[d], delta[d], P);
                    st |= fw_secagg_encode(&dev[d], delta[d], 0, P, round_key, (uint8_t *)masked[d]));
            expect(st == 0, "encode");
        }
        /* the pairwise masks cancel: sum of masked - self masks == sum of the grid vectors, each
         * grid vector being a masked vector of a machine whose only seed is zero... recomputed
         * here with the self seed's stream subtracted (ChaCha20 of b, words of 2 bytes) */
        for (i = 0; i < P; i++) {
            uint16_t s = 0, g = 0;
            for (d = 0; d < N; d++) {
                uint8_t blk[64];
                ft_chacha20_block(dev[d].seeds, (uint32_t)(2 * i / 64), (const uint8_t *)"fedtiny-mask", blk);
                s = (uint16_t)(s + masked[d][i] - (uint16_t)(blk[(2 * i) % 64] | blk[(2 * i) % 64 + 1] << 8));
            }
            {
                fw_secagg plain;
                uint8_t q[2];
                for (d = 0; d < N; d++) {
                    plain = dev[d];
                    plain.n_masks = 0;
                    expect(fw_secagg_encode(&plain, delta[d], (size_t)i, 1, round_key, q) == 0, "grid");
                    g = (uint16_t)(g + (q[0] | q[1] << 8));
                }
            }
            if (s != g) { expect(0, "pairwise masks cancel"); break; }
        }
    }
    for (d = 0; d < N; d++) put32(msg + 4 * d, (uint32_t)d);
    for (d = 0; d < N; d++) {
        COUNTED(d, "unmask answer: ", st = fw_secagg_unmask(&dev[d], msg, 4u * N, out, sizeof out, &n_out));
        expect(st == 0 && n_out == 38u * K, "unmask");
    }
    put_u("k = ", K, " neighbours");
    put_u("one round, device side: ", total, " instructions");
    put_u("failures: ", (uint32_t)failures, "");
    return failures != 0;
}

int main(void) {
    CPACR |= 0xFu << 20; /* the FPU (Cortex-M4F), before any float instruction (bench's prologue may save FP registers) */
    __asm__ volatile("dsb\n isb" ::: "memory");
    return bench();
}
