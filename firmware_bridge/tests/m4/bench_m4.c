/* bench_m4.c - instructions executed by the secure-aggregation crypto on a Cortex-M4, measured in
 * QEMU (mps2-an386) with -icount shift=0, where the virtual clock advances one nanosecond per
 * instruction; SysTick counts that clock (the board's 25 MHz: one tick per 40 instructions) and a
 * calibration loop of a known instruction count turns ticks into instructions. Each result is
 * checked against its known answer, so a miscompiled build cannot report a figure.
 *
 *   make -C firmware_bridge m4-bench      (needs arm-none-eabi-gcc and qemu-system-arm) */
#include <stdint.h>
#include <string.h>

#include "../../ft_crypto.h"

void semi_write0(const char *s);

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static uint32_t ticks_now(void) { return SYST_CVR; }
static uint32_t ticks_since(uint32_t start) { return (start - SYST_CVR) & 0xFFFFFFu; }

static void put_u(const char *label, uint32_t v, const char *unit)
{
    char buf[160], digits[12]; /* labels stay under 120 characters */
    size_t n = 0, d = 0;
    while (*label) buf[n++] = *label++;
    do { digits[d++] = (char)('0' + v % 10u); v /= 10u; } while (v);
    while (d) buf[n++] = digits[--d];
    while (*unit) buf[n++] = *unit++;
    buf[n++] = '\n';
    buf[n] = 0;
    semi_write0(buf);
}

/* 2 instructions per iteration (subs, bne) plus a few around it */
__attribute__((noinline)) static void spin(uint32_t n)
{
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) : : "cc");
}

static int failures;
static void expect(int ok, const char *what)
{
    if (!ok) { semi_write0("WRONG ANSWER: "); semi_write0(what); semi_write0("\n"); failures++; }
}

static uint8_t buf[2048];

int main(void)
{
    static const uint8_t key[32] = {1, 2, 3}, nonce[12] = {7};
    static const uint8_t a_sk[32] = {0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51,
                                     0xb2, 0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77,
                                     0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a}; /* RFC 7748 §6.1 Alice */
    static const uint8_t a_pk[4] = {0x85, 0x20, 0xf0, 0x09};             /* her public key's first bytes */
    uint8_t out[32], tag[16], ct[80], shares[8 * 33], rnd[4 * 32], back[80];
    uint32_t t0, t1, cal, per_tick_x100;
    int st;

    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u; /* enable, processor clock, no interrupt */

    t0 = ticks_now();
    spin(1000000u);
    cal = ticks_since(t0);
    per_tick_x100 = (uint32_t)(200000000ull / cal); /* instructions per tick, x100 */
    put_u("calibration: instructions per SysTick tick x100 = ", per_tick_x100, "");

#define MEASURE(label, stmt)                                                                      \
    do {                                                                                          \
        t0 = ticks_now();                                                                         \
        stmt;                                                                                     \
        t1 = ticks_since(t0);                                                                     \
        put_u(label, (uint32_t)((uint64_t)t1 * per_tick_x100 / 100u), " instructions"); \
    } while (0)

    MEASURE("x25519 (one scalar multiplication): ", ft_x25519_public(out, a_sk));
    expect(memcmp(out, a_pk, 4) == 0, "x25519");
    MEASURE("hkdf-sha256 (32-byte ikm, 32-byte okm): ", st = ft_hkdf_sha256(NULL, 0, key, 32, nonce, 12, out, 32));
    expect(st == FT_WIRE_OK, "hkdf");
    memset(buf, 0x5a, 80);
    MEASURE("chacha20-poly1305 encrypt (80 bytes, 12-byte aad): ",
            st = ft_aead_chacha20poly1305_encrypt(key, nonce, nonce, 12, buf, 80, ct, tag));
    MEASURE("chacha20-poly1305 decrypt (80 bytes, 12-byte aad): ",
            st |= ft_aead_chacha20poly1305_decrypt(key, nonce, nonce, 12, ct, 80, tag, back));
    expect(st == FT_WIRE_OK && back[79] == 0x5a, "aead");
    memset(rnd, 0x33, sizeof rnd);
    MEASURE("shamir split (32 bytes, n = 8, t = 5): ", st = ft_shamir_split(key, 32, 8, 5, rnd, shares));
    MEASURE("shamir combine (32 bytes, t = 5): ", st |= ft_shamir_combine(shares + 2 * 33, 5, 32, back));
    expect(st == FT_WIRE_OK && memcmp(back, key, 32) == 0, "shamir");
    MEASURE("chacha20 keystream (2048 bytes = 32 blocks): ", st = ft_chacha20_xor(key, 0, nonce, NULL, buf, 2048));
    expect(st == FT_WIRE_OK, "chacha20");
    put_u("failures: ", (uint32_t)failures, "");
    return failures != 0;
}
