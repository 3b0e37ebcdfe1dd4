/*
 * board.c - boards/board.h for the MPS2 AN386 (Cortex-M4F, 25 MHz) as qemu-system-arm models
 * it: CMSDK UART0 with a receive interrupt into a ring buffer, SysTick milliseconds, and the
 * non-volatile counter and log over Arm semihosting (qemu -semihosting-config enable=on).
 *
 * Non-volatile counter: the board has no flash controller that qemu models, so the counter is
 * a file on the host, NV_FILE in qemu's working directory, read and written with semihosting
 * SYS_OPEN/SYS_READ/SYS_WRITE. It survives a system_reset and a kill of qemu, as flash would.
 * A port to a real part writes a flash page (or EEPROM, or a backup register) instead.
 */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "mps2.h"

#ifndef BOARD_BAUD
#define BOARD_BAUD 115200u
#endif
#ifndef UART_RING_BYTES
#define UART_RING_BYTES 1024u /* what may arrive during local training; a power of two */
#endif
#define NV_FILE "fedtiny-nv.bin"
#define CYCLES_PER_MS (MPS2_SYSCLK_HZ / 1000u)

extern uint32_t _stack_bottom, _stack_top, _provision_start, _provision_size;

void SysTick_Handler(void);
void UART0RX_Handler(void);

/* ---- semihosting (Arm "Semihosting for AArch32 and AArch64", operations 0x01..0x20) ---- */
static int32_t semihost(uint32_t op, const void *args) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}
#define SYS_OPEN 0x01u
#define SYS_CLOSE 0x02u
#define SYS_WRITE0 0x04u
#define SYS_WRITE 0x05u
#define SYS_READ 0x06u
#define SYS_EXIT_EXTENDED 0x20u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

/* ---- time ---- */
static volatile uint32_t g_ms;
static uint64_t g_idle_cycles;

void SysTick_Handler(void) { g_ms++; }

/* Processor cycles since boot (a millisecond count and the SysTick down-counter). */
static uint64_t cycles_now(void) {
    uint32_t ms, left;
    do {
        ms = g_ms;
        left = MPS2_SYST_CVR;
    } while (ms != g_ms);
    return (uint64_t)ms * CYCLES_PER_MS + (CYCLES_PER_MS - 1u - left);
}

uint32_t board_millis(void) { return g_ms; }

uint64_t board_busy_cycles(void) { return cycles_now() - g_idle_cycles; }

/* ---- UART0: receive interrupt into a single-producer single-consumer ring ---- */
static volatile uint8_t g_ring[UART_RING_BYTES];
static volatile uint32_t g_head, g_tail; /* head: written by the interrupt; tail: by the application */
static volatile uint32_t g_dropped;

void UART0RX_Handler(void) {
    MPS2_UART_INTCLEAR = MPS2_UART_INT_RX; /* first: a byte arriving while we read raises it again */
    while (MPS2_UART_STATE & MPS2_UART_STATE_RXFULL) {
        const uint8_t b = (uint8_t)MPS2_UART_DATA;
        const uint32_t head = g_head;
        if (head - g_tail < UART_RING_BYTES) {
            g_ring[head % UART_RING_BYTES] = b;
            g_head = head + 1u;
        } else {
            g_dropped++;
        }
    }
}

int board_uart_getc(uint8_t *byte) {
    const uint32_t tail = g_tail;
    if (tail == g_head)
        return 0;
    *byte = g_ring[tail % UART_RING_BYTES];
    g_tail = tail + 1u;
    return 1;
}

uint32_t board_uart_dropped(void) { return g_dropped; }

int board_uart_write(const uint8_t *data, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) {
        while (MPS2_UART_STATE & MPS2_UART_STATE_TXFULL) {
        }
        MPS2_UART_DATA = data[i];
    }
    return 0;
}

uint32_t board_uart_baud(void) { return BOARD_BAUD; }

void board_idle(void) {
    const uint64_t t0 = cycles_now();
    __asm__ volatile("cpsid i" ::: "memory");
    if (g_tail == g_head) /* checked with interrupts off: a byte cannot slip in before the wfi */
        __asm__ volatile("wfi" ::: "memory");
    __asm__ volatile("cpsie i" ::: "memory"); /* the waking interrupt runs here */
    g_idle_cycles += cycles_now() - t0;
}

void board_init(void) {
    MPS2_SYST_RVR = CYCLES_PER_MS - 1u;
    MPS2_SYST_CVR = 0;
    MPS2_SYST_CSR = MPS2_SYST_CSR_ENABLE | MPS2_SYST_CSR_TICKINT | MPS2_SYST_CSR_CLKSOURCE;
    MPS2_UART_BAUDDIV = MPS2_SYSCLK_HZ / BOARD_BAUD;
    MPS2_UART_CTRL = MPS2_UART_CTRL_TXEN | MPS2_UART_CTRL_RXEN | MPS2_UART_CTRL_RXINTEN;
    MPS2_NVIC_ISER0 = 1u << MPS2_UART0_RX_IRQ;
}

/* ---- flash: the provisioning image ---- */
const uint8_t *board_provision(size_t *size) {
    *size = (size_t)(uintptr_t)&_provision_size;
    return (const uint8_t *)&_provision_start;
}

/* ---- the non-volatile counter: 8 bytes (value, ~value) in NV_FILE on the host ---- */
static int nv_open(uint32_t mode) {
    const uint32_t args[3] = {(uint32_t)(uintptr_t)NV_FILE, mode, (uint32_t)(sizeof NV_FILE - 1u)};
    return semihost(SYS_OPEN, args);
}

int board_nv_load(uint32_t *value) {
    uint32_t rec[2] = {0, 0};
    int32_t left;
    const int fd = nv_open(1u); /* "rb" */
    if (fd < 0)
        return -1;
    {
        const uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)rec, sizeof rec};
        left = semihost(SYS_READ, args); /* bytes NOT read */
    }
    {
        const uint32_t args[1] = {(uint32_t)fd};
        (void)semihost(SYS_CLOSE, args);
    }
    if (left != 0 || rec[1] != ~rec[0])
        return -1;
    *value = rec[0];
    return 0;
}

int board_nv_store(uint32_t value) {
    const uint32_t rec[2] = {value, ~value};
    int32_t left;
    const int fd = nv_open(5u); /* "wb" */
    if (fd < 0)
        return -1;
    {
        const uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)rec, sizeof rec};
        left = semihost(SYS_WRITE, args); /* bytes NOT written */
    }
    {
        const uint32_t args[1] = {(uint32_t)fd};
        if (semihost(SYS_CLOSE, args) != 0)
            return -1;
    }
    return left == 0 ? 0 : -1;
}

/* ---- stack, log, exit ---- */
size_t board_stack_unused(void) {
    const uint32_t *p = &_stack_bottom;
    while (p < &_stack_top && *p == STACK_PAINT)
        p++;
    return (size_t)(p - &_stack_bottom) * sizeof *p;
}

void board_log(const char *text) {
    (void)semihost(SYS_WRITE0, text);
    (void)semihost(SYS_WRITE0, "\n");
}

void board_exit(int code) {
    const uint32_t args[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    for (;;)
        (void)semihost(SYS_EXIT_EXTENDED, args);
}
