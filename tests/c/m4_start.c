/* m4_start.c - the vector table that lets a C unit test run on an emulated Cortex-M4
 * (qemu-system-arm -M mps2-an386 -semihosting): initial stack at the top of the board's 4 MiB
 * SRAM at 0x20000000, reset into newlib's semihosting start-up (rdimon: stdio and exit go to qemu),
 * every fault parks the core (qemu's timeout then fails the test). Linked at address 0 with
 * -Wl,--section-start=.vectors=0x0 (tests/test_wire_m4.py). */
extern void _start(void);

static void park(void)
{
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))0x20400000u, _start, park, park, park, park, park, 0, 0, 0, 0, park, park, 0, park, park,
};
