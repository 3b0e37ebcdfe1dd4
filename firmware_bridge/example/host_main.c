/*
 * host_main.c - runs the example firmware (fw_device.c) on a POSIX host against a serial
 * device or a pseudo-terminal, so tests drive the real C device through `fedtiny bridge`.
 * This harness is the only file with stdio, files and a clock; on a board they are the UART
 * driver, flash and SysTick.
 *
 *   fw_host (--tty PATH | --fd N) --provision FILE [--baud B] [--rounds R] [--timeout S] [--dump-delta P]
 *
 * Secure rounds take their keys' randomness from /dev/urandom (a board: its hardware RNG). Built with
 * -DFW_SECAGG=0 it is the small part's image: it sits secure rounds out, unless a bridge with
 * --secagg-proxy runs them for it (docs/secagg.md).
 * --dump-delta P: after each round, the float32 delta the device trained is written to P.rN (N the
 * round): the tests' oracle of a secure round (the aggregator itself never sees it).
 * FILE: a provisioning image (fw_provision.h; example/provision.py writes it), the same bytes a
 * board keeps in flash. B: the line's bit rate the timers assume (default 115200).
 * Exit 0 after R rounds (after a secure round: once the aggregator says it finished, or 10 s later)
 * or when the aggregator says training is finished, 1 on timeout, 2 when
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
#include "fw_provision.h"

#define LINGER_MS 10000u
static fw_device g_dev; /* static: the board has no heap either */
static uint32_t g_image[(FW_PROVISION_HEADER_BYTES + FW_MAX_SAMPLES * (4u + FW_IN) + 8u) / 4u]; /* aligned */

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

static int host_random(void *ctx, uint8_t *out, size_t n) {
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got;
    (void)ctx;
    if (!f)
        return -1;
    got = fread(out, 1, n, f);
    fclose(f);
    return got == n ? 0 : -1;
}

static void dump_delta(const char *prefix, uint32_t round) {
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s.r%u", prefix, (unsigned)round);
    f = fopen(path, "wb");
    if (f) {
        fwrite(g_dev.params, sizeof g_dev.params[0], FW_N_PARAMS, f);
        fclose(f);
    }
}

static size_t load_image(const char *path) {
    size_t n;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    n = fread(g_image, 1, sizeof g_image, f);
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    const char *tty = NULL, *provision = NULL, *dump = NULL;
    uint32_t done = 0, linger_end = 0;
    int fd = -1, i;
    uint32_t rounds = 1, timeout_s = 60, baud = 115200;
    fw_config cfg;
    uint32_t t_end;
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tty")) tty = argv[i + 1];
        else if (!strcmp(argv[i], "--fd")) fd = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--provision")) provision = argv[i + 1];
        else if (!strcmp(argv[i], "--baud")) baud = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--rounds")) rounds = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--timeout")) timeout_s = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--dump-delta")) dump = argv[i + 1];
        else break;
    }
    if ((tty == NULL && fd < 0) || provision == NULL || i < argc) {
        fprintf(stderr, "usage: fw_host (--tty PATH | --fd N) --provision FILE [--baud B] [--rounds R] [--timeout S] [--dump-delta P]\n");
        return 2;
    }
    memset(&cfg, 0, sizeof cfg);
    if (fw_provision_parse((const uint8_t *)g_image, load_image(provision), &cfg) != 0) {
        fprintf(stderr, "fw_host: %s is not a valid provisioning image: write it with example/provision.py\n",
                provision);
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
    cfg.baud = baud;
    cfg.seq0 = (uint32_t)time(NULL) * 1000u + (uint32_t)getpid(); /* unique per start: the join nonces */
    cfg.write = write_all;
    cfg.write_ctx = &fd;
    cfg.random = host_random;
    if (fw_init(&g_dev, &cfg) != 0) {
        fprintf(stderr, "fw_host: bad configuration (--baud must be >= 300)\n");
        return 2;
    }
    t_end = now_ms() + timeout_s * 1000u;
    /* After the last round the loop keeps serving while a secure round may still need us: its unmask
     * answer is not acknowledged, so a lost one is asked for again (until the aggregator says it
     * finished, or LINGER_MS). A board never stops serving; only this harness exits. */
    while (g_dev.state != FW_FINISHED && !g_dev.model_refused && (int32_t)(t_end - now_ms()) > 0) {
        if (g_dev.rounds_done >= rounds) {
            if (g_dev.offer.fixed_scale <= 0.0f)
                break;
            if (linger_end == 0)
                linger_end = now_ms() + LINGER_MS;
            else if ((int32_t)(linger_end - now_ms()) <= 0)
                break;
        }
        struct pollfd p = {fd, POLLIN, 0};
        uint8_t buf[512];
        if (poll(&p, 1, 5) > 0 && (p.revents & POLLIN)) {
            ssize_t n = read(fd, buf, sizeof buf);
            ssize_t k;
            for (k = 0; k < n; k++)
                fw_on_byte(&g_dev, buf[k], now_ms());
        }
        fw_poll(&g_dev, now_ms());
        if (g_dev.rounds_done != done) {
            done = g_dev.rounds_done;
            if (dump != NULL)
                dump_delta(dump, g_dev.round);
        }
    }
    if (g_dev.model_refused) {
        fprintf(stderr, "fw_host: device %u: the aggregator's model is not mlp:64-10 (650 parameters), the one "
                "this firmware trains: run the aggregator with --model mlp:64-10\n", (unsigned)cfg.device_id);
        return 2;
    }
#if FW_SECAGG
    printf("device %u: %u round(s), last round %u, %u frame(s) rejected, %u secure-aggregation frame(s) dropped, "
           "secure round status %d\n", (unsigned)cfg.device_id, (unsigned)g_dev.rounds_done, (unsigned)g_dev.round,
           (unsigned)g_dev.frames_rejected, (unsigned)g_dev.sa.dropped, (int)g_dev.sa.status);
#else /* built as the small part's image: no SecAgg+ (a bridge with --secagg-proxy runs it) */
    printf("device %u: %u round(s), last round %u, %u frame(s) rejected, no secure aggregation\n",
           (unsigned)cfg.device_id, (unsigned)g_dev.rounds_done, (unsigned)g_dev.round,
           (unsigned)g_dev.frames_rejected);
#endif
    return g_dev.rounds_done >= rounds || g_dev.state == FW_FINISHED ? 0 : 1;
}
