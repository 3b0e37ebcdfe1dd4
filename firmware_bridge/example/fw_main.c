/*
 * fw_main.c - the example firmware's main(), for any board that implements boards/board.h:
 * read the provisioning image, count this boot in non-volatile memory, then feed received bytes to the
 * device loop and poll its timers, sleeping in between. One line per finished round goes to
 * the board's log (bytes each way, CPU cycles awake, untouched stack).
 */
#include "board.h"
#include "fw_device.h"
#include "fw_provision.h"

static fw_device g_dev; /* static: no heap on a board */

typedef struct {
    uint32_t rx, tx;
} line_counts;

static line_counts g_line;

static int write_line(void *ctx, const uint8_t *data, size_t len) {
    (void)ctx;
    g_line.tx += (uint32_t)len;
    return board_uart_write(data, len);
}

/* A tiny log line builder: no stdio on the board. */
typedef struct {
    char text[160];
    size_t len;
} log_line;

static void put_str(log_line *l, const char *s) {
    while (*s != '\0' && l->len + 1u < sizeof l->text)
        l->text[l->len++] = *s++;
    l->text[l->len] = '\0';
}

static void put_u64(log_line *l, const char *key, uint64_t v) {
    char digits[21];
    size_t n = 0;
    put_str(l, key);
    do {
        digits[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (n > 0u && l->len + 1u < sizeof l->text)
        l->text[l->len++] = digits[--n];
    l->text[l->len] = '\0';
}

static void log_round(uint32_t rounds, uint64_t cycles, const line_counts *since) {
    log_line l = {{0}, 0};
    put_u64(&l, "fw: round ", g_dev.round);
    put_u64(&l, " done ", rounds);
    put_u64(&l, " rx ", g_line.rx - since->rx);
    put_u64(&l, " tx ", g_line.tx - since->tx);
    put_u64(&l, " cycles ", cycles);
    put_u64(&l, " seq ", g_dev.seq);
    put_u64(&l, " stack_unused ", board_stack_unused());
    put_u64(&l, " rx_dropped ", board_uart_dropped());
    put_u64(&l, " rejected ", g_dev.frames_rejected);
    put_u64(&l, " ms ", board_millis());
    board_log(l.text);
}

int main(void) {
    fw_config cfg = {0};
    size_t image_size = 0;
    const uint8_t *image;
    uint32_t boots = 0, rounds_seen = 0;
    uint64_t cycles0;
    line_counts since;
    log_line l = {{0}, 0};

    board_init();
    image = board_provision(&image_size);
    if (fw_provision_parse(image, image_size, &cfg) != 0) {
        board_log("fw: no valid provisioning image (write one with example/provision.py)");
        board_exit(2);
    }
    /* The boot counter: this boot's value is stored before anything is sent, so no two boots
     * join with the same nonce (boot value, join counter) and a rebooted board is not its own
     * replay. No counter, no join: a device that cannot store it stops here. */
    if (board_nv_load(&boots) != 0)
        boots = 0; /* a new device */
    boots++;
    if (board_nv_store(boots) != 0) {
        board_log("fw: cannot store the boot counter in non-volatile memory");
        board_exit(2);
    }
    cfg.baud = board_uart_baud();
    cfg.seq0 = boots;
    cfg.write = write_line;
    if (fw_init(&g_dev, &cfg) != 0) {
        board_log("fw: bad configuration");
        board_exit(2);
    }
    put_u64(&l, "fw: boot device ", cfg.device_id);
    put_u64(&l, " samples ", (uint64_t)cfg.n_samples);
    put_u64(&l, " boot ", boots);
    put_u64(&l, " baud ", cfg.baud);
    board_log(l.text);

    since = g_line;
    cycles0 = board_busy_cycles();
    for (;;) {
        uint8_t b;
        while (board_uart_getc(&b)) {
            g_line.rx++;
            fw_on_byte(&g_dev, b, board_millis());
        }
        fw_poll(&g_dev, board_millis());
        if (g_dev.rounds_done != rounds_seen) {
            const uint64_t now = board_busy_cycles();
            rounds_seen = g_dev.rounds_done;
            log_round(rounds_seen, now - cycles0, &since);
            since = g_line;
            cycles0 = now;
        }
        if (g_dev.state == FW_FINISHED) {
            board_log("fw: the aggregator says training is finished");
            board_exit(0);
        }
        board_idle();
    }
}
