/*
 * ft_rx.h - the aggregator's per-datagram path, host only (POSIX sockets; never in firmware).
 *
 * One call, ft_rx_poll(), drains a UDP socket in batches (recvmmsg on Linux, recvfrom
 * elsewhere) and does for each datagram what the aggregator did in Python, cheapest check
 * first, so that garbage costs as little as possible:
 *
 *   1. size (a datagram over FT_WIRE_MAX_FRAME)                        "oversize"
 *   2. ft_wire_peek: magic, version, type, lengths, chunk fields       (wire status names)
 *   3. device id known (binary search in the caller's sorted table)    "unknown_device"
 *   4. per-source limit: every datagram a source sends that fails a
 *      check (here, or in the caller: ft_rx_penalize) costs it a token;
 *      a source without tokens is dropped here, before any tag is
 *      computed                                                       "source_limited"
 *      and, on Linux, blocked in the kernel for block_seconds: a socket
 *      filter (classic BPF, SO_ATTACH_FILTER) drops its datagrams before
 *      they take room in the socket's receive buffer or cost a system
 *      call (counted by the kernel as the socket's drops)
 *   5. ft_wire_decode against the device's current session: run, epoch
 *      and session (before any hashing), the tag (constant time), round
 *      and replay                                                     (wire status names)
 *   6. an UPDATE_CHUNK of the open round from a device that holds a
 *      staging slot is staged here: chunk count, length, duplicate,
 *      the codec's reader rule (ft_codec_check_blocks), then copied into its
 *      slot                                                           "bad_chunk" "bad_length"
 *                                                                     "duplicate_chunk"
 *                                                                     "bad_scale" "bad_value"
 * What the caller must see becomes an event: an authentic frame of the current session
 * (FRAME), a frame this path does not check itself (RAW, the datagram as received: a join
 * HELLO, a frame of a session that is not yet current, an in-session HELLO), and the staging
 * milestones (an ACK is due, an update is complete). Checks 2 and 5 are the one frame codec
 * (ft_frame.c): this file calls them, it does not repeat them.
 *
 * No malloc: every table, the staging memory and the event buffer belong to the caller.
 */
#ifndef FT_RX_H
#define FT_RX_H

#include <stddef.h>
#include <stdint.h>

#include "ft_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FT_RX_BATCH 64u             /* datagrams per recvmmsg call */
#define FT_RX_HEADER_BYTES 16u      /* Int8Update header at the start of each staging slot */

/* Reasons counted by the rx path itself (the wire statuses are counted by status). */
typedef enum {
    FT_RX_OVERSIZE = 0,
    FT_RX_SOURCE_LIMITED = 1,
    FT_RX_BAD_CHUNK = 2,
    FT_RX_BAD_LENGTH = 3,
    FT_RX_DUPLICATE_CHUNK = 4,
    FT_RX_BAD_SCALE = 5,
    FT_RX_BAD_VALUE = 6,
    FT_RX_N_REASONS = 7
} ft_rx_reason;
const char *ft_rx_reason_name(int reason);

/* The int8 reader rule (codec.check_blocks): 0 when `len` bytes are whole blocks that may be
 * decoded, else FT_RX_BAD_LENGTH (not whole blocks, or none), FT_RX_BAD_SCALE (a scale that is
 * negative, NaN, Inf or above FLT_MAX/127) or FT_RX_BAD_VALUE (an int8 -128); the first
 * failing block decides, scale before values. */
int ft_q8_check_blocks(const uint8_t *blocks, size_t len);
/* The reader rule of the upload codec `codec` (FT_CODEC_INT8/INT4/INT2/ROT1), the same returns;
 * an unknown codec is FT_RX_BAD_LENGTH. */
int ft_codec_check_blocks(uint8_t codec, const uint8_t *blocks, size_t len);

typedef struct {
    uint32_t device_id;
    uint8_t key[FT_WIRE_MAX_KEY_BYTES]; /* the current session's key */
    uint8_t key_len;           /* 0: no current session (every frame goes to the caller) */
    uint8_t selected;          /* set by the caller: in the open round */
    uint16_t since_ack;        /* chunks taken since the last ACK_DUE event */
    uint16_t session;          /* the current session's number */
    uint16_t pad;
    int32_t slot;              /* staging slot, -1: none (the caller assigns it) */
    ft_replay *guard;          /* the current session's guard (the caller's own), or NULL */
} ft_rx_device;

typedef struct {
    uint8_t addr[16];          /* IPv4 in the first 4 bytes, or IPv6 */
    uint16_t port;
    uint8_t family;            /* 0: empty entry */
    uint8_t pad;
    float tokens;
    double last;
} ft_rx_source;

#define FT_RX_MAX_BLOCKED 32u      /* sources blocked in the kernel at once */

typedef struct {
    uint8_t addr[16];
    uint16_t port;
    uint8_t family;            /* 0: empty */
    uint8_t pad;
    double until;              /* blocked until this time (the clock of `now`) */
} ft_rx_blocked;

enum { FT_RX_EV_FRAME = 1, FT_RX_EV_ACK_DUE = 2, FT_RX_EV_COMPLETE = 3, FT_RX_EV_RAW = 4 };

typedef struct {
    uint8_t kind;              /* FT_RX_EV_* */
    uint8_t family;            /* source address: 4 or 6 */
    uint16_t port;
    uint8_t addr[16];
    uint32_t device_index;     /* into the device table */
    ft_wire_header hdr;        /* FRAME: the authentic header; RAW: the peeked one */
    uint16_t len;              /* RAW: datagram bytes in data */
    uint8_t data[FT_WIRE_MAX_FRAME]; /* FRAME: the payload (hdr.payload_len bytes); RAW: the datagram */
} ft_rx_event;

typedef struct {
    /* caller's tables */
    ft_rx_device *devices;     /* sorted by device_id, ascending */
    uint32_t n_devices;
    ft_rx_source *sources;     /* open-addressing table, n_sources a power of two */
    uint32_t n_sources;
    float source_burst;        /* tokens a source starts with */
    float source_rate;         /* tokens per second it earns back, up to the burst */
    uint32_t run;              /* this life of the aggregator: its run tag and epoch */
    uint32_t epoch;
    /* the round and its staging memory (n_slots x slot_stride bytes, FT_RX_HEADER_BYTES of
     * Int8Update header and then the blocks; received: n_slots x n_chunks flags; count:
     * n_slots chunk counts) */
    uint32_t round;
    uint8_t round_open;
    uint8_t codec;             /* the round's upload codec (FT_CODEC_*): block size, chunking, reader rule */
    uint16_t ack_every;
    uint32_t n_blocks;
    uint32_t n_chunks;
    uint32_t n_slots;
    size_t slot_stride;
    uint8_t *staging;
    uint8_t *received;
    uint32_t *count;
    /* counters (cumulative; the caller reads and may reset them) */
    uint64_t datagrams;
    uint64_t bytes;
    uint64_t staged;
    uint64_t wire_rejects[32]; /* by -ft_wire_status */
    uint64_t rx_rejects[FT_RX_N_REASONS];
    /* kernel blocking of limited sources (ft_rx_poll): 0 seconds = off */
    double block_seconds;
    ft_rx_blocked blocked[FT_RX_MAX_BLOCKED];
    uint8_t blocked_changed;   /* the filter must be rebuilt */
    uint64_t blocks;           /* sources blocked so far */
    uint32_t n_blocked;        /* sources blocked now */
    int block_errno;           /* the last setsockopt failure (0: none) */
} ft_rx;

/* Receive and handle datagrams from the non-blocking socket fd until it is empty, the event
 * buffer could overflow with one more batch, or max_datagrams were read. *n_events = events
 * written. Returns 0 when the socket is drained, 1 when more may be waiting, or -errno. */
int ft_rx_poll(ft_rx *rx, int fd, double now, uint32_t max_datagrams, ft_rx_event *events,
               uint32_t cap_events, uint32_t *n_events);

/* The same checks for one datagram already received (tests, and the fallback of a platform
 * without a socket): 0 nothing for the caller, 1 an event was written to *ev. */
int ft_rx_datagram(ft_rx *rx, const uint8_t *data, size_t len, int truncated, int family,
                   const uint8_t *addr, uint16_t port, double now, ft_rx_event *ev);

/* The classic BPF socket filter that drops the datagrams of rx->blocked (IPv4 and IPv6
 * sources, by address and port) and accepts the rest, written to prog (8 bytes per
 * instruction, `struct sock_filter`); returns the instructions written, 0 when nothing is
 * blocked, or -1 when cap is too small. At most 14 * FT_RX_MAX_BLOCKED + 1 instructions. */
int ft_rx_filter(const ft_rx *rx, uint8_t *prog, uint32_t cap);

/* Datagrams the kernel dropped for socket fd (SO_MEMINFO: those a socket filter refused and
 * those that found the receive buffer full), or -1 where the platform does not tell. */
long long ft_rx_socket_drops(int fd);

/* A datagram of this source that the caller refused (a RAW event it found bad): one token. */
void ft_rx_penalize(ft_rx *rx, int family, const uint8_t *addr, uint16_t port, double now);

#ifdef __cplusplus
}
#endif
#endif /* FT_RX_H */
