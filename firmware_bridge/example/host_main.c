/*
 * host_main.c - runs the example firmware (fw_device.c) on a POSIX host against a serial
 * device or a pseudo-terminal, so tests drive the real C device through `fedtiny bridge`.
 * This harness is the only file with stdio, files and a clock; on a board they are the UART
 * driver, flash and SysTick.
 *
 *   fw_host (--tty PATH | --fd N) --id ID --key HEX --data FILE [--rounds R] [--timeout S]
 *
 * FILE: int32 n, then n x 64 float32 samples, then n int32 labels (little-endian).
 * Exit 0 after R rounds (or when the aggregator says training is finished), 1 on timeout, 2 when
 * the aggregator's model is not the one this firmware trains.
 */
#define _DEFAULT_SOURCE /* cfmakeraw */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "fw_device.h"

static fw_device g_dev; /* static: the board has no heap either */
static float g_x[FW_MAX_SAMPLES * FW_IN];
static int32_t g_y[FW_MAX_SAMPLES];

static uint32_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static int write_all(void *ctx, const uint8_t *data, size_t len) {
    int fd = *(int *)ctx;
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                struct pollfd p = {fd, POLLOUT, 0};
                (void)poll(&p, 1, 10);
                continue;
            }
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int hex_key(const char *hex, uint8_t *key, size_t cap, size_t *len) {
    size_t n = strlen(hex), i;
    if (n % 2 || n / 2 > cap)
        return -1;
    for (i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        key[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static int32_t load_data(const char *path) {
    int32_t n = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    if (fread(&n, 4, 1, f) != 1 || n < 1 || n > FW_MAX_SAMPLES ||
        fread(g_x, sizeof(float) * FW_IN, (size_t)n, f) != (size_t)n || fread(g_y, 4, (size_t)n, f) != (size_t)n)
        n = -1;
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    const char *tty = NULL, *hexkey = NULL, *data = NULL;
    int fd = -1, i;
    uint32_t id = 0, rounds = 1, timeout_s = 60;
    uint8_t key[FT_WIRE_MAX_KEY_BYTES];
    size_t key_len = 0;
    fw_config cfg;
    uint32_t t_end;
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tty")) tty = argv[i + 1];
        else if (!strcmp(argv[i], "--fd")) fd = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--id")) id = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--key")) hexkey = argv[i + 1];
        else if (!strcmp(argv[i], "--data")) data = argv[i + 1];
        else if (!strcmp(argv[i], "--rounds")) rounds = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--timeout")) timeout_s = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else break;
    }
    if ((tty == NULL && fd < 0) || hexkey == NULL || data == NULL || i < argc) {
        fprintf(stderr, "usage: fw_host (--tty PATH | --fd N) --id ID --key HEX --data FILE [--rounds R] [--timeout S]\n");
        return 2;
    }
    if (hex_key(hexkey, key, sizeof key, &key_len) != 0) {
        fprintf(stderr, "fw_host: --key must be 32 to 128 hex digits\n");
        return 2;
    }
    if (tty != NULL) {
        struct termios t;
        fd = open(tty, O_RDWR | O_NOCTTY);
        if (fd < 0 || tcgetattr(fd, &t) != 0) {
            perror(tty);
            return 2;
        }
        cfmakeraw(&t);
        (void)tcsetattr(fd, TCSANOW, &t);
    }
    cfg.device_id = id;
    cfg.key = key;
    cfg.key_len = key_len;
    cfg.x = g_x;
    cfg.y = g_y;
    cfg.n_samples = load_data(data);
    cfg.seq0 = (uint32_t)time(NULL) * 1000u + (uint32_t)getpid(); /* unique per start: the join nonces */
    cfg.write = write_all;
    cfg.write_ctx = &fd;
    if (cfg.n_samples < 1) {
        fprintf(stderr, "fw_host: cannot read %s (int32 n, n x 64 float32, n int32)\n", data);
        return 2;
    }
    if (fw_init(&g_dev, &cfg) != 0) {
        fprintf(stderr, "fw_host: bad configuration\n");
        return 2;
    }
    t_end = now_ms() + timeout_s * 1000u;
    while (g_dev.state != FW_FINISHED && !g_dev.model_refused && g_dev.rounds_done < rounds && (int32_t)(t_end - now_ms()) > 0) {
        struct pollfd p = {fd, POLLIN, 0};
        uint8_t buf[512];
        if (poll(&p, 1, 5) > 0 && (p.revents & POLLIN)) {
            ssize_t n = read(fd, buf, sizeof buf);
            ssize_t k;
            for (k = 0; k < n; k++)
                fw_on_byte(&g_dev, buf[k], now_ms());
        }
        fw_poll(&g_dev, now_ms());
    }
    if (g_dev.model_refused) {
        fprintf(stderr, "fw_host: device %u: the aggregator's model is not mlp:64-10 (650 parameters), the one "
                "this firmware trains: run the aggregator with --model mlp:64-10\n", (unsigned)id);
        return 2;
    }
    printf("device %u: %u round(s), last round %u, %u frame(s) rejected\n", (unsigned)id,
           (unsigned)g_dev.rounds_done, (unsigned)g_dev.round, (unsigned)g_dev.frames_rejected);
    return g_dev.rounds_done >= rounds || g_dev.state == FW_FINISHED ? 0 : 1;
}
