/*
 * board_stub.c - the shape of a board's main(): UART bytes in, fw_poll() on a millisecond tick,
 * fw_device as one static object. The UART and the tick are stubs here: this file exists to
 * link the firmware for a Cortex-M4 and measure its flash and RAM (tests/test_bridge.py):
 *
 *   arm-none-eabi-gcc -std=c99 -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os
 *       -ffunction-sections -fdata-sections -Icsrc -Ifirmware_bridge -Ifirmware_bridge/example
 *       board_stub.c fw_device.c, the wire library's .c files, ft_chacha20.c (the csrc kernels'
 *       ChaCha20), every csrc .c file (arch ones too)
 *       -Wl,--gc-sections --specs=nosys.specs -lm
 * (19.9 KB flash with newlib's startup, 41 KB RAM: the fw_device object is 39.7 KB of it)
 */
#include "fw_device.h"

static fw_device g_dev;
static const uint8_t g_key[FT_WIRE_MIN_KEY_BYTES]; /* provisioned per device in flash */
static float g_x[FW_IN];                           /* the local data set, in flash */
static int32_t g_y[1];

static int uart_write(void *ctx, const uint8_t *data, size_t len) {
    (void)ctx;
    (void)data;
    (void)len;
    return 0;
}

/* Stand-ins for the UART's status and data registers (volatile: the compiler must keep every
 * path that a received byte can take, so the size measured is the real firmware's). */
static volatile uint8_t g_uart_rx_ready, g_uart_rx_data;

static int uart_read(uint8_t *byte) {
    if (!g_uart_rx_ready)
        return 0;
    *byte = g_uart_rx_data;
    return 1;
}

int main(void) {
    fw_config cfg = {0, g_key, sizeof g_key, g_x, g_y, 1, 1, uart_write, 0};
    uint32_t now = 0;
    if (fw_init(&g_dev, &cfg) != 0)
        return 1;
    for (;;) {
        uint8_t b;
        while (uart_read(&b))
            fw_on_byte(&g_dev, b, now);
        fw_poll(&g_dev, now++);
    }
}
