/*
 * ft_rx.c - the aggregator's per-datagram path (see ft_rx.h for the order of the checks).
 *
 * Host only: it reads a socket. The frame checks are ft_wire_peek and ft_wire_decode from
 * ft_frame.c; this file adds what only a receiver with many peers needs (the device table,
 * per-source limits, staging into the caller's slots) and the batched receive.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* recvmmsg */
#endif

#include "ft_rx.h"

#include <errno.h>
#include <float.h>
#include <string.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#if defined(__linux__)
#include <linux/filter.h>
#include <linux/sock_diag.h> /* SK_MEMINFO_* */
#endif

#if defined(__linux__) && defined(MSG_WAITFORONE)
#define FT_RX_HAVE_RECVMMSG 1
#else
#define FT_RX_HAVE_RECVMMSG 0
#endif

static const char *const rx_reason_names[FT_RX_N_REASONS] = {
    "oversize", "source_limited", "bad_chunk", "bad_length", "duplicate_chunk", "bad_scale", "bad_value",
};

const char *ft_rx_reason_name(int reason)
{
    return reason >= 0 && reason < (int)FT_RX_N_REASONS ? rx_reason_names[reason] : "unknown_status";
}

static float load_f32_le(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

int ft_q8_check_blocks(const uint8_t *blocks, size_t len)
{
    /* 127 * d must stay finite. FLT_MAX / 127 rounds UP to a float whose 127 * d is Inf, so the
     * largest legal scale is the float just below it: d < max_scale (tests/test_boundaries.py). */
    const float max_scale = FLT_MAX / 127.0f;
    size_t off;
    size_t i;

    if (blocks == NULL || len == 0 || len % FT_WIRE_BLOCK_BYTES != 0) {
        return FT_RX_BAD_LENGTH;
    }
    for (off = 0; off < len; off += FT_WIRE_BLOCK_BYTES) {
        float d = load_f32_le(blocks + off);
        if (!(d >= 0.0f && d < max_scale)) { /* negative, NaN (compares false), Inf, too large */
            return FT_RX_BAD_SCALE;
        }
        for (i = 4; i < FT_WIRE_BLOCK_BYTES; i++) {
            if (blocks[off + i] == 0x80u) { /* int8 -128: its negation overflows */
                return FT_RX_BAD_VALUE;
            }
        }
    }
    return 0;
}

/* The reader rule of the sub-byte formats (docs/PROTOCOL.md "Sub-byte updates"): a scale in
 * [0, FLT_MAX / qmax] (FLT_MAX / 512 for FTR1, whose decoded values reach 512 s), no 4-bit
 * code 0 and no 2-bit code 3 (outside the grid); every bit of FTR1 is a value. */
static int lowbit_check_blocks(uint8_t codec, const uint8_t *blocks, size_t len)
{
    const size_t bb = ft_wire_codec_block_bytes(codec);
    const float max_scale = codec == FT_CODEC_INT4 ? FLT_MAX / 7.0f
                            : codec == FT_CODEC_INT2 ? FLT_MAX
                                                     : FLT_MAX / 512.0f;
    size_t off, i;

    if (blocks == NULL || len == 0 || len % bb != 0) {
        return FT_RX_BAD_LENGTH;
    }
    for (off = 0; off < len; off += bb) {
        float d = load_f32_le(blocks + off);
        if (!(d >= 0.0f && d <= max_scale)) {
            return FT_RX_BAD_SCALE;
        }
        for (i = 4; i < bb; i++) {
            const uint8_t b = blocks[off + i];
            if (codec == FT_CODEC_INT4 && ((b & 0x0Fu) == 0u || (b >> 4) == 0u)) {
                return FT_RX_BAD_VALUE;
            }
            /* a 2-bit code 3 is a pair of set bits at an even position */
            if (codec == FT_CODEC_INT2 && (b & (b >> 1) & 0x55u) != 0u) {
                return FT_RX_BAD_VALUE;
            }
        }
    }
    return 0;
}

int ft_codec_check_blocks(uint8_t codec, const uint8_t *blocks, size_t len)
{
    switch (codec) {
    case FT_CODEC_INT8: return ft_q8_check_blocks(blocks, len);
    case FT_CODEC_INT4: case FT_CODEC_INT2: case FT_CODEC_ROT1: return lowbit_check_blocks(codec, blocks, len);
    default: return FT_RX_BAD_LENGTH;
    }
}

/* ---- tables ---------------------------------------------------------------------------- */

static ft_rx_device *find_device(const ft_rx *rx, uint32_t id)
{
    uint32_t lo = 0, hi = rx->n_devices;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        uint32_t v = rx->devices[mid].device_id;
        if (v == id) {
            return &rx->devices[mid];
        }
        if (v < id) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

static uint32_t hash_source(int family, const uint8_t *addr, uint16_t port)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t n = family == 6 ? 16u : 4u, i;
    for (i = 0; i < n; i++) {
        h = (h ^ addr[i]) * 16777619u;
    }
    h = (h ^ (uint8_t)port) * 16777619u;
    h = (h ^ (uint8_t)(port >> 8)) * 16777619u;
    return h;
}

/* The source's entry (found, or taken over: a full table forgets the entry at the hash's
 * probe end, so memory stays fixed whatever the number of sources). NULL: no table. */
static ft_rx_source *find_source(ft_rx *rx, int family, const uint8_t *addr, uint16_t port, double now)
{
    uint32_t mask, h, probe;
    size_t n = family == 6 ? 16u : 4u;
    ft_rx_source *s;

    if (rx->sources == NULL || rx->n_sources == 0) {
        return NULL;
    }
    mask = rx->n_sources - 1u;
    h = hash_source(family, addr, port);
    for (probe = 0; probe < 8u; probe++) {
        s = &rx->sources[(h + probe) & mask];
        if (s->family == 0) {
            break;
        }
        if (s->family == (uint8_t)family && s->port == port && memcmp(s->addr, addr, n) == 0) {
            double earned = (now - s->last) * (double)rx->source_rate;
            if (earned > 0) {
                double t = (double)s->tokens + earned;
                s->tokens = t > (double)rx->source_burst ? rx->source_burst : (float)t;
            }
            s->last = now;
            return s;
        }
    }
    if (probe == 8u) {
        s = &rx->sources[(h + 7u) & mask];
    }
    memset(s, 0, sizeof *s);
    memcpy(s->addr, addr, n);
    s->port = port;
    s->family = (uint8_t)family;
    s->tokens = rx->source_burst;
    s->last = now;
    return s;
}

static void penalize(ft_rx_source *src)
{
    if (src != NULL && src->tokens >= 1.0f) {
        src->tokens -= 1.0f;
    }
}

/* ---- kernel blocking of limited sources ------------------------------------------------ */

static int same_source(const uint8_t *a, uint16_t a_port, uint8_t a_family, const uint8_t *b, uint16_t b_port,
                       uint8_t b_family)
{
    return a_family == b_family && a_port == b_port && memcmp(a, b, a_family == 6 ? 16u : 4u) == 0;
}

/* The source ran out of tokens: block it in the kernel for block_seconds (a full list gives up
 * the entry that expires first). */
static void block_source(ft_rx *rx, const ft_rx_source *s, double now)
{
    uint32_t i, victim = 0;
    ft_rx_blocked *b;

    if (!(rx->block_seconds > 0.0)) {
        return;
    }
    for (i = 0; i < FT_RX_MAX_BLOCKED; i++) {
        b = &rx->blocked[i];
        if (b->family != 0 && same_source(b->addr, b->port, b->family, s->addr, s->port, s->family)) {
            return; /* queued before its filter was attached */
        }
    }
    for (i = 0; i < FT_RX_MAX_BLOCKED; i++) {
        if (rx->blocked[i].family == 0) {
            victim = i;
            break;
        }
        if (rx->blocked[i].until < rx->blocked[victim].until) {
            victim = i;
        }
    }
    b = &rx->blocked[victim];
    if (b->family == 0) {
        rx->n_blocked++;
    }
    memset(b, 0, sizeof *b);
    memcpy(b->addr, s->addr, 16);
    b->port = s->port;
    b->family = s->family;
    b->until = now + rx->block_seconds;
    rx->blocked_changed = 1;
    rx->blocks++;
}

static void expire_blocks(ft_rx *rx, double now)
{
    uint32_t i;
    for (i = 0; i < FT_RX_MAX_BLOCKED; i++) {
        if (rx->blocked[i].family != 0 && rx->blocked[i].until <= now) {
            rx->blocked[i].family = 0;
            rx->n_blocked--;
            rx->blocked_changed = 1;
        }
    }
}

/* classic BPF (linux/filter.h; the encoding is the same on every Linux architecture) */
enum {
    BPF_LD_W_ABS = 0x00 | 0x00 | 0x20,
    BPF_LD_H_ABS = 0x00 | 0x08 | 0x20,
    BPF_LD_B_ABS = 0x00 | 0x10 | 0x20,
    BPF_ALU_AND_K = 0x04 | 0x50 | 0x00,
    BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00,
    BPF_RET_K = 0x06 | 0x00
};
#define FT_SKF_NET_OFF (-0x100000) /* loads relative to the IP header; offset 0 is the UDP header */

static void put_insn(uint8_t *prog, uint32_t at, uint16_t code, uint8_t jt, uint8_t jf, uint32_t k)
{
    struct {
        uint16_t code;
        uint8_t jt;
        uint8_t jf;
        uint32_t k;
    } insn;
    insn.code = code;
    insn.jt = jt;
    insn.jf = jf;
    insn.k = k;
    memcpy(prog + (size_t)at * 8u, &insn, 8u);
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* An IPv4 source seen on an IPv6 socket (::ffff:a.b.c.d) arrives in an IPv4 header. */
static const uint8_t *v4_of(const ft_rx_blocked *b)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (b->family == 4) {
        return b->addr;
    }
    return b->family == 6 && memcmp(b->addr, mapped, sizeof mapped) == 0 ? b->addr + 12 : NULL;
}

int ft_rx_filter(const ft_rx *rx, uint8_t *prog, uint32_t cap)
{
    uint32_t i, w, n = 0, need = 1;
    const uint32_t net = (uint32_t)FT_SKF_NET_OFF;

    for (i = 0; i < FT_RX_MAX_BLOCKED; i++) {
        if (rx->blocked[i].family != 0) {
            need += v4_of(&rx->blocked[i]) != NULL ? 8u : 14u;
        }
    }
    if (need == 1) {
        return 0;
    }
    if (prog == NULL || cap < need) {
        return -1;
    }
    /* One block per source; a mismatch jumps to the next block, a match returns 0 (drop). */
    for (i = 0; i < FT_RX_MAX_BLOCKED; i++) {
        const ft_rx_blocked *b = &rx->blocked[i];
        const uint8_t *v4 = v4_of(b);
        if (b->family == 0) {
            continue;
        }
        if (v4 != NULL) {                              /* 8 instructions */
            put_insn(prog, n++, BPF_LD_B_ABS, 0, 0, net);                 /* IP version */
            put_insn(prog, n++, BPF_ALU_AND_K, 0, 0, 0xf0u);
            put_insn(prog, n++, BPF_JMP_JEQ_K, 0, 5, 0x40u);
            put_insn(prog, n++, BPF_LD_W_ABS, 0, 0, net + 12u);           /* IPv4 source */
            put_insn(prog, n++, BPF_JMP_JEQ_K, 0, 3, be32(v4));
            put_insn(prog, n++, BPF_LD_H_ABS, 0, 0, 0u);                  /* UDP source port */
            put_insn(prog, n++, BPF_JMP_JEQ_K, 0, 1, b->port);
            put_insn(prog, n++, BPF_RET_K, 0, 0, 0u);
        } else {                                       /* IPv6: 14 instructions */
            put_insn(prog, n++, BPF_LD_B_ABS, 0, 0, net);
            put_insn(prog, n++, BPF_ALU_AND_K, 0, 0, 0xf0u);
            put_insn(prog, n++, BPF_JMP_JEQ_K, 0, 11, 0x60u);
            for (w = 0; w < 4u; w++) {                                    /* IPv6 source */
                put_insn(prog, n++, BPF_LD_W_ABS, 0, 0, net + 8u + 4u * w);
                put_insn(prog, n++, BPF_JMP_JEQ_K, 0, (uint8_t)(9u - 2u * w), be32(b->addr + 4u * w));
            }
            put_insn(prog, n++, BPF_LD_H_ABS, 0, 0, 0u);
            put_insn(prog, n++, BPF_JMP_JEQ_K, 0, 1, b->port);
            put_insn(prog, n++, BPF_RET_K, 0, 0, 0u);
        }
    }
    put_insn(prog, n++, BPF_RET_K, 0, 0, 0xffffffffu); /* everyone else: the whole datagram */
    return (int)n;
}

static void update_filter(ft_rx *rx, int fd)
{
    rx->blocked_changed = 0;
#if defined(__linux__) && defined(SO_ATTACH_FILTER)
    {
        struct sock_filter prog[14u * FT_RX_MAX_BLOCKED + 1u];
        struct sock_fprog fp;
        int n = ft_rx_filter(rx, (uint8_t *)prog, (uint32_t)(sizeof prog / sizeof prog[0]));
        if (n > 0) {
            fp.len = (unsigned short)n;
            fp.filter = prog;
            if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp) != 0) {
                rx->block_errno = errno;
            }
        } else {
            int unused = 0; /* the kernel wants an int's worth of option value even here */
            if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused) != 0 && errno != ENOENT) {
                rx->block_errno = errno;
            }
        }
    }
#else
    (void)fd;
#endif
}

long long ft_rx_socket_drops(int fd)
{
#if defined(__linux__) && defined(SO_MEMINFO)
    uint32_t info[SK_MEMINFO_VARS];
    socklen_t len = sizeof info;
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info, &len) == 0 && len > SK_MEMINFO_DROPS * sizeof info[0]) {
        return (long long)info[SK_MEMINFO_DROPS];
    }
#else
    (void)fd;
#endif
    return -1;
}

static void count_wire(ft_rx *rx, int status)
{
    int i = -status;
    if (i > 0 && i < 32) {
        rx->wire_rejects[i]++;
    }
}

/* ---- one datagram ------------------------------------------------------------------------ */

static void fill_event(ft_rx_event *ev, int kind, const ft_rx *rx, const ft_rx_device *dev, int family,
                       const uint8_t *addr, uint16_t port)
{
    ev->kind = (uint8_t)kind;
    ev->family = (uint8_t)family;
    ev->port = port;
    memcpy(ev->addr, addr, 16);
    ev->device_index = (uint32_t)(dev - rx->devices);
}

static size_t chunk_bytes(const ft_rx *rx, uint32_t index)
{
    const uint32_t per = ft_wire_codec_chunk_blocks(rx->codec);
    uint32_t first = index * per;
    uint32_t end = first + per;
    if (end > rx->n_blocks) {
        end = rx->n_blocks;
    }
    return (size_t)(end - first) * ft_wire_codec_block_bytes(rx->codec);
}

/* An authentic UPDATE_CHUNK of the open round from a device with a slot: the same checks, in
 * the same order, as fedtiny/net/ingest.py UpdateIngest.add_chunk. 1: an event is due. */
static int stage_chunk(ft_rx *rx, ft_rx_device *dev, const ft_wire_header *hdr, const uint8_t *payload)
{
    uint32_t slot = (uint32_t)dev->slot;
    uint8_t *got = rx->received + (size_t)slot * rx->n_chunks;
    int reason;

    if (hdr->chunk_count != rx->n_chunks || hdr->chunk_index >= rx->n_chunks) {
        rx->rx_rejects[FT_RX_BAD_CHUNK]++;
        return 0;
    }
    if (hdr->payload_len != chunk_bytes(rx, hdr->chunk_index)) {
        rx->rx_rejects[FT_RX_BAD_LENGTH]++;
        return 0;
    }
    if (rx->count[slot] == rx->n_chunks || got[hdr->chunk_index]) {
        rx->rx_rejects[FT_RX_DUPLICATE_CHUNK]++;
    } else {
        reason = ft_codec_check_blocks(rx->codec, payload, hdr->payload_len);
        if (reason != 0) {
            rx->rx_rejects[reason]++;
            return 0;
        }
        memcpy(rx->staging + (size_t)slot * rx->slot_stride + FT_RX_HEADER_BYTES +
                   (size_t)hdr->chunk_index * ft_wire_codec_chunk_blocks(rx->codec) *
                       ft_wire_codec_block_bytes(rx->codec),
               payload, hdr->payload_len);
        got[hdr->chunk_index] = 1;
        rx->count[slot]++;
        rx->staged++;
        if (rx->count[slot] == rx->n_chunks) {
            dev->since_ack = 0;
            return FT_RX_EV_COMPLETE;
        }
    }
    dev->since_ack++;
    if (dev->since_ack >= rx->ack_every) {
        dev->since_ack = 0;
        return FT_RX_EV_ACK_DUE;
    }
    return 0;
}

/* The datagram goes to the caller, checked only up to the header; if the caller refuses it, it
 * charges the source with ft_rx_penalize (a bridge relays many devices from one address: only
 * failures may cost a source its tokens). */
static int raw_event(ft_rx *rx, const ft_rx_device *dev, ft_rx_source *src, const uint8_t *data, size_t len,
                     int family, const uint8_t *addr, uint16_t port, const ft_wire_header *hdr, ft_rx_event *ev)
{
    (void)src;
    fill_event(ev, FT_RX_EV_RAW, rx, dev, family, addr, port);
    ev->hdr = *hdr;
    ev->len = (uint16_t)len;
    memcpy(ev->data, data, len);
    return 1;
}

int ft_rx_datagram(ft_rx *rx, const uint8_t *data, size_t len, int truncated, int family,
                   const uint8_t *addr, uint16_t port, double now, ft_rx_event *ev)
{
    ft_wire_header hdr;
    const uint8_t *payload = NULL;
    ft_rx_device *dev;
    ft_rx_source *src = NULL;
    int st, kind;

    rx->datagrams++;
    rx->bytes += len;
    src = find_source(rx, family, addr, port, now);
    if (src != NULL && src->tokens < 1.0f) { /* first: a limited source costs one table look-up */
        rx->rx_rejects[FT_RX_SOURCE_LIMITED]++;
        block_source(rx, src, now);
        return 0;
    }
    if (truncated || len > FT_WIRE_MAX_FRAME) {
        rx->rx_rejects[FT_RX_OVERSIZE]++;
        penalize(src);
        return 0;
    }
    st = ft_wire_peek(data, len, &hdr);
    if (st != FT_WIRE_OK) {
        count_wire(rx, st);
        penalize(src);
        return 0;
    }
    dev = find_device(rx, hdr.device_id);
    if (dev == NULL) {
        count_wire(rx, FT_WIRE_ERR_UNKNOWN_DEVICE);
        penalize(src);
        return 0;
    }
    if (hdr.session == 0 || dev->key_len == 0 || hdr.session != dev->session) {
        if (hdr.session != 0) {
            /* Not the current session: the codec's session check (before any hashing) tells a
             * stale run or epoch, which die here; another session of this life may be one
             * the caller offered and has not seen used yet. */
            static const uint8_t no_key[FT_WIRE_MIN_KEY_BYTES];
            ft_replay scratch;
            ft_replay_bind(&scratch, rx->run, rx->epoch, dev->key_len ? dev->session : 0u);
            st = ft_wire_decode(data, len, no_key, sizeof no_key, &scratch, 0, &hdr, &payload);
            if (st != FT_WIRE_ERR_STALE_SESSION) {
                count_wire(rx, st);
                penalize(src);
                return 0;
            }
        }
        return raw_event(rx, dev, src, data, len, family, addr, port, &hdr, ev);
    }
    if (hdr.type == FT_MSG_HELLO) {
        return raw_event(rx, dev, src, data, len, family, addr, port, &hdr, ev);
    }
    st = ft_wire_decode(data, len, dev->key, dev->key_len, dev->guard, 0, &hdr, &payload);
    if (st != FT_WIRE_OK) {
        count_wire(rx, st);
        if (st == FT_WIRE_ERR_BAD_TAG) {
            penalize(src); /* replays and late frames are authentic: no penalty */
        }
        return 0;
    }
    if (hdr.type == FT_MSG_UPDATE_CHUNK && rx->round_open && hdr.round == rx->round && dev->selected &&
        dev->slot >= 0 && (uint32_t)dev->slot < rx->n_slots) {
        kind = stage_chunk(rx, dev, &hdr, payload);
        if (kind != 0) {
            fill_event(ev, kind, rx, dev, family, addr, port);
            ev->hdr = hdr;
            return 1;
        }
        return 0;
    }
    fill_event(ev, FT_RX_EV_FRAME, rx, dev, family, addr, port);
    ev->hdr = hdr;
    memcpy(ev->data, payload, hdr.payload_len);
    return 1;
}

void ft_rx_penalize(ft_rx *rx, int family, const uint8_t *addr, uint16_t port, double now)
{
    penalize(find_source(rx, family, addr, port, now));
}

/* ---- the socket -------------------------------------------------------------------------- */

static void source_of(const struct sockaddr_storage *ss, int *family, uint8_t addr[16], uint16_t *port)
{
    memset(addr, 0, 16);
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)ss;
        *family = 6;
        memcpy(addr, &a->sin6_addr, 16);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)ss;
        *family = 4;
        memcpy(addr, &a->sin_addr, 4);
        *port = ntohs(a->sin_port);
    }
}

int ft_rx_poll(ft_rx *rx, int fd, double now, uint32_t max_datagrams, ft_rx_event *events,
               uint32_t cap_events, uint32_t *n_events)
{
    static const size_t buf_bytes = FT_WIRE_MAX_FRAME + 1u; /* one more: an oversize datagram shows */
    uint8_t bufs[FT_RX_BATCH][FT_WIRE_MAX_FRAME + 1u];
    struct sockaddr_storage from[FT_RX_BATCH];
    uint32_t done = 0, n_ev = 0;
    uint8_t addr[16];
    uint16_t port;
    int family;
#if FT_RX_HAVE_RECVMMSG
    struct mmsghdr msgs[FT_RX_BATCH];
    struct iovec iov[FT_RX_BATCH];
#endif

    if (rx == NULL || events == NULL || n_events == NULL) {
        return -EINVAL;
    }
    *n_events = 0;
    expire_blocks(rx, now);
    if (rx->blocked_changed) {
        update_filter(rx, fd);
    }
    while (done < max_datagrams && cap_events - n_ev >= FT_RX_BATCH) {
        uint32_t want = max_datagrams - done < FT_RX_BATCH ? max_datagrams - done : FT_RX_BATCH;
        uint32_t got, i;
#if FT_RX_HAVE_RECVMMSG
        int r;
        for (i = 0; i < want; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = buf_bytes;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        r = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *n_events = n_ev;
                return 0;
            }
            if (errno == EINTR || errno == ECONNREFUSED) {
                continue; /* an ICMP error from a device that went away: keep reading */
            }
            *n_events = n_ev;
            return -errno;
        }
        got = (uint32_t)r;
        for (i = 0; i < got; i++) {
            source_of(&from[i], &family, addr, &port);
            n_ev += (uint32_t)ft_rx_datagram(rx, bufs[i], msgs[i].msg_len,
                                             (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0, family, addr,
                                             port, now, &events[n_ev]);
        }
#else
        got = 0;
        for (i = 0; i < want; i++) {
            socklen_t flen = sizeof from[0];
            ssize_t r = recvfrom(fd, bufs[0], buf_bytes, MSG_DONTWAIT, (struct sockaddr *)&from[0], &flen);
            if (r < 0) {
                if (errno == EINTR || errno == ECONNREFUSED) {
                    continue;
                }
                *n_events = n_ev;
                return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
            }
            got++;
            source_of(&from[0], &family, addr, &port);
            n_ev += (uint32_t)ft_rx_datagram(rx, bufs[0], (size_t)r, (size_t)r > FT_WIRE_MAX_FRAME, family,
                                             addr, port, now, &events[n_ev]);
        }
#endif
        done += got;
        if (rx->blocked_changed) {
            update_filter(rx, fd); /* at once: the rest of the flood stays in the kernel */
        }
        if (got < want) {
            *n_events = n_ev;
            return 0;
        }
    }
    *n_events = n_ev;
    return 1;
}
