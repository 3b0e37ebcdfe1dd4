/*
 * flood.c - a UDP flooder for tests/test_flood.py: one source, a paced rate, sendmmsg batches.
 *
 *   flood HOST PORT RATE SECONDS FRAMES_FILE
 *
 * Sends the datagrams of FRAMES_FILE (each a 2-byte little-endian length, then the bytes) round
 * robin to HOST:PORT from one connected UDP socket at RATE datagrams per second (in batches of
 * up to 64 per sendmmsg call, paced against the monotonic clock) for SECONDS or until SIGTERM.
 * Prints "ready" once set up, and at the end "SENT SECONDS": the datagrams the kernel accepted
 * and the seconds it took.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAMES 256
#define BATCH 64

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    static unsigned char frames[MAX_FRAMES][2048];
    static size_t lens[MAX_FRAMES];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct addrinfo hints, *ai = NULL;
    unsigned char len2[2];
    size_t n_frames = 0, k = 0;
    unsigned long long sent = 0, attempted = 0;
    double rate, seconds, t0, t;
    FILE *f;
    int fd, i;

    if (argc != 6) {
        fprintf(stderr, "usage: flood HOST PORT RATE SECONDS FRAMES_FILE\n");
        return 2;
    }
    rate = atof(argv[3]);
    seconds = atof(argv[4]);
    f = fopen(argv[5], "rb");
    if (f == NULL || !(rate > 0) || !(seconds > 0)) {
        fprintf(stderr, "flood: cannot read %s, or RATE/SECONDS not positive\n", argv[5]);
        return 2;
    }
    while (n_frames < MAX_FRAMES && fread(len2, 1, 2, f) == 2) {
        lens[n_frames] = (size_t)len2[0] | ((size_t)len2[1] << 8);
        if (lens[n_frames] == 0 || lens[n_frames] > sizeof frames[0] ||
            fread(frames[n_frames], 1, lens[n_frames], f) != lens[n_frames]) {
            fprintf(stderr, "flood: %s is not a list of length-prefixed datagrams\n", argv[5]);
            return 2;
        }
        n_frames++;
    }
    fclose(f);
    if (n_frames == 0) {
        fprintf(stderr, "flood: %s holds no datagram\n", argv[5]);
        return 2;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0 || ai == NULL) {
        fprintf(stderr, "flood: cannot resolve %s:%s\n", argv[1], argv[2]);
        return 2;
    }
    fd = socket(ai->ai_family, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("flood: socket");
        return 2;
    }
    freeaddrinfo(ai);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    printf("ready\n");
    fflush(stdout);

    t0 = now_s();
    while (!stop) {
        unsigned long long due;
        int want, r;
        t = now_s() - t0;
        if (t >= seconds) {
            break;
        }
        due = (unsigned long long)(t * rate);
        if (due <= attempted) {
            struct timespec pause = {0, 200000}; /* 0.2 ms */
            nanosleep(&pause, NULL);
            continue;
        }
        want = due - attempted > BATCH ? BATCH : (int)(due - attempted);
        for (i = 0; i < want; i++) {
            iov[i].iov_base = frames[k];
            iov[i].iov_len = lens[k];
            k = (k + 1) % n_frames;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        r = sendmmsg(fd, msgs, (unsigned)want, 0);
        attempted += (unsigned long long)want; /* paced on attempts: a refused batch is not retried */
        if (r > 0) {
            sent += (unsigned long long)r;
        } else if (r < 0 && errno != ECONNREFUSED && errno != EINTR && errno != ENOBUFS && errno != EAGAIN) {
            perror("flood: sendmmsg");
            break;
        }
    }
    printf("%llu %.6f\n", sent, now_s() - t0);
    fflush(stdout);
    close(fd);
    return 0;
}
