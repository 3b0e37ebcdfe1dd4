/* mps2.h - the registers this port uses (Cortex-M4 core, CMSDK APB UART0 of MPS2 AN386). */
#ifndef MPS2_H
#define MPS2_H

#include <stdint.h>

#define MPS2_REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* System control block and SysTick (ARMv7-M architecture reference manual, B3.2, B3.3) */
#define MPS2_SCB_CPACR MPS2_REG(0xE000ED88u)
#define MPS2_SYST_CSR MPS2_REG(0xE000E010u)
#define MPS2_SYST_RVR MPS2_REG(0xE000E014u)
#define MPS2_SYST_CVR MPS2_REG(0xE000E018u)
#define MPS2_NVIC_ISER0 MPS2_REG(0xE000E100u)
#define MPS2_SYST_CSR_ENABLE 1u
#define MPS2_SYST_CSR_TICKINT 2u
#define MPS2_SYST_CSR_CLKSOURCE 4u /* the processor clock */

/* CMSDK APB UART0 (AN386: receive interrupt IRQ 0, transmit IRQ 1) */
#define MPS2_UART0 0x40004000u
#define MPS2_UART_DATA MPS2_REG(MPS2_UART0 + 0x00u)
#define MPS2_UART_STATE MPS2_REG(MPS2_UART0 + 0x04u)
#define MPS2_UART_CTRL MPS2_REG(MPS2_UART0 + 0x08u)
#define MPS2_UART_INTCLEAR MPS2_REG(MPS2_UART0 + 0x0Cu)
#define MPS2_UART_BAUDDIV MPS2_REG(MPS2_UART0 + 0x10u)
#define MPS2_UART_STATE_TXFULL 1u
#define MPS2_UART_STATE_RXFULL 2u
#define MPS2_UART_CTRL_TXEN 1u
#define MPS2_UART_CTRL_RXEN 2u
#define MPS2_UART_CTRL_RXINTEN 8u
#define MPS2_UART_INT_RX 2u
#define MPS2_UART0_RX_IRQ 0u

#define MPS2_SYSCLK_HZ 25000000u /* AN386 SYSCLK, also the processor clock */
#define STACK_PAINT 0xC5C5C5C5u

#endif /* MPS2_H */
