/*
 * board.h - what the example firmware (example/fw_main.c) needs from a board, and nothing else.
 *
 * A port is one folder, boards/<board>/, that implements these functions (startup code, linker
 * script, UART driver, tick, non-volatile counter) and a Makefile that links them with the
 * portable sources. The application never touches a register; the board never sees a frame.
 *
 * Contract:
 *  - board_init() runs once, before anything else: clocks, the tick, the UART with its receive
 *    interrupt (bytes go into a ring buffer while the application trains).
 *  - Nothing here blocks except board_uart_write (until the bytes are in the transmitter) and
 *    board_idle (until the next interrupt).
 */
#ifndef BOARD_H
#define BOARD_H

#include <stddef.h>
#include <stdint.h>

void board_init(void);

/* Milliseconds since boot (wraps after 49.7 days; callers compare differences). */
uint32_t board_millis(void);
/* CPU cycles spent awake (not in board_idle) since boot: the firmware's work, for reports. */
uint64_t board_busy_cycles(void);
/* The serial line's bit rate (the firmware derives its timers from it). */
uint32_t board_uart_baud(void);
/* 1 and *byte set if the receive ring held a byte, else 0. */
int board_uart_getc(uint8_t *byte);
/* Bytes the receive ring had to drop because it was full (the application was too slow). */
uint32_t board_uart_dropped(void);
/* Send len bytes; 0 when they are all handed to the transmitter. */
int board_uart_write(const uint8_t *data, size_t len);
/* Sleep until an interrupt, unless a received byte is already waiting. */
void board_idle(void);

/* The provisioning image in flash (example/fw_provision.h): device id, key, data set. */
const uint8_t *board_provision(size_t *size);

/* The non-volatile counter (the boot counter behind the join nonces). load: 0 and *value set,
 * or -1 when nothing was ever stored. store: 0 when the value will survive a reset or a power
 * cycle. */
int board_nv_load(uint32_t *value);
int board_nv_store(uint32_t value);

/* Bytes of the stack never touched since reset (the reset handler paints it). */
size_t board_stack_unused(void);
/* A line of text for the developer (semihosting, SWO or a second UART; may do nothing). */
void board_log(const char *text);
/* Stop: report code to a debugger/emulator if there is one, else wait for a reset. */
void board_exit(int code);

#endif /* BOARD_H */
