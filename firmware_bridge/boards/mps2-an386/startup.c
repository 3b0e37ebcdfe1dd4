/*
 * startup.c - mps2-an386 reset: vector table, .data copy, .bss zero, FPU on, stack painted.
 */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "mps2.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_bottom, _stack_top;
int main(void);
void reset_handler(void);
void default_handler(void);
void hardfault_handler(void);
void SysTick_Handler(void);
void UART0RX_Handler(void);

void default_handler(void) {
    board_log("fw: unexpected interrupt");
    board_exit(3);
}

void hardfault_handler(void) {
    board_log("fw: HardFault");
    board_exit(3);
}

/* Cortex-M4: 16 system exceptions, then the board's 32 interrupts (UART0 receive is IRQ 0). */
typedef void (*vector)(void);
__attribute__((section(".vectors"), used)) static const vector g_vectors[16 + 32] = {
    (vector)(uintptr_t)&_stack_top,
    reset_handler,
    default_handler,   /* NMI */
    hardfault_handler,
    hardfault_handler, /* MemManage */
    hardfault_handler, /* BusFault */
    hardfault_handler, /* UsageFault */
    0, 0, 0, 0,
    default_handler,   /* SVCall */
    default_handler,   /* DebugMonitor */
    0,
    default_handler,   /* PendSV */
    SysTick_Handler,
    [16 + 0] = UART0RX_Handler,
    [16 + 1] = default_handler, /* UART0 TX (not enabled: transmit is polled) */
    [16 + 2 ... 16 + 31] = default_handler,
};

void reset_handler(void) {
    uint32_t *p;
    uint32_t *sp;
    /* Before anything runs that may use the FPU: CP10 and CP11 full access. The firmware is
     * built with -mfloat-abi=hard, so the first float instruction faults without this. */
    MPS2_SCB_CPACR |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    for (p = &_sdata; p < &_edata; p++)
        *p = *(&_sidata + (p - &_sdata));
    for (p = &_sbss; p < &_ebss; p++)
        *p = 0;
    /* Paint the stack below this frame: board_stack_unused() counts the untouched words. */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = &_stack_bottom; p < sp - 16; p++)
        *p = STACK_PAINT;
    (void)main();
    board_exit(1);
}
