/*
 * fw_device.h - an example fedtiny device firmware: a dense head (64 -> 10, softmax) trained on
 * 8x8 digits, talking the wire protocol over a serial line to `fedtiny bridge`.
 *
 * Portable C99: no malloc, no stdio, no clock of its own. The board (or the host harness,
 * host_main.c) feeds received bytes with fw_on_byte(), calls fw_poll() with the time every few
 * milliseconds, and provides the one output function `write` in fw_config. Everything else is
 * the csrc/ kernels (local SGD, int8 block quantization) and the wire library (frames, HMAC,
 * replay guard, COBS + CRC-32).
 *
 * The data set stays where the board keeps it (flash): uint8 pixels and one scale, converted
 * to float as each batch is gathered (ft_train_sgd_u8).
 *
 * Memory (all static inside fw_device, sized at compile time): model and global copy
 * 2 x 650 floats (an int8 download is received into the first and decoded into the second: no
 * buffer of its own), training arena FW_ARENA_FLOATS floats, int8 update blocks, one frame buffer
 * each way, and the COBS decoder's buffer.
 */
#ifndef FW_DEVICE_H
#define FW_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "fedtiny.h"
#include "ft_wire.h"

#define FW_IN 64
#define FW_OUT 10
#define FW_N_PARAMS (FW_IN * FW_OUT + FW_OUT) /* 650: Dense W[10][64] then b[10] */
#define FW_N_BLOCKS ((FW_N_PARAMS + FT_QK - 1) / FT_QK)
#define FW_MODEL_CHUNKS ((4u * FW_N_PARAMS + FT_WIRE_MODEL_CHUNK_BYTES - 1) / FT_WIRE_MODEL_CHUNK_BYTES)
/* The int8 download (--down-codec int8): the FTQ8 header and the blocks, 808 bytes in 1 chunk.
 * It is received into the training copy (params, 2,600 bytes) and decoded into global. */
#define FW_MODEL_Q8_BYTES (FT_CODEC_HEADER_BYTES + FW_N_BLOCKS * FT_WIRE_BLOCK_BYTES)
#define FW_UPDATE_CHUNKS ((FW_N_BLOCKS + FT_WIRE_UPDATE_CHUNK_BLOCKS - 1) / FT_WIRE_UPDATE_CHUNK_BLOCKS)
#define FW_MAX_BATCH 16
#define FW_ARENA_FLOATS 6144 /* >= ft_train_arena_floats of the 64-10 head at batch 16 (5,840) */
#define FW_MAX_SAMPLES 1024

/* JOINING: no session, join HELLOs until the WELCOME for their nonce; WAITING: in a session,
 * HELLOs until an offer; REFUSED: the aggregator's model is not this firmware's (it stops). */
typedef enum { FW_JOINING, FW_DOWNLOADING, FW_UPLOADING, FW_DONE, FW_FINISHED, FW_WAITING, FW_REFUSED } fw_state;

typedef struct {
    uint32_t device_id;
    const uint8_t *key;
    size_t key_len;
    const uint8_t *x;        /* n_samples x 64 pixels, the local data set (flash on a board) */
    float x_scale;           /* a sample's features are x[i] * x_scale (1/16 for 8x8 digits) */
    const int32_t *y;        /* n_samples labels 0..9 */
    int32_t n_samples;
    uint32_t baud;           /* the serial line's bit rate: every timer is derived from it */
    uint32_t seq0;           /* unique per boot (a persisted boot counter, an RTC or a hardware RNG):
                              * the join nonces are (seq0, join counter), so no two joins of this
                              * device ever share one; fw_main.c takes it from the board's
                              * non-volatile counter, incremented and stored before anything is sent */
    /* Writes line bytes to the serial port; returns 0 on success. */
    int (*write)(void *ctx, const uint8_t *data, size_t len);
    void *write_ctx;
} fw_config;

/* Fixed allowance (ms) for the host side: the bridge, the network and the aggregator's answer
 * (generous: it only delays recovery from a lost frame, and a busy host answers late). */
#define FW_LATENCY_MS 300u

/* Timers (ms), from the baud rate and the frame sizes (fw_init; see fw_device.c). */
typedef struct {
    uint32_t hello_every;
    uint32_t model_quiet;    /* no model chunk and no byte for this long: ask again for the missing ones */
    uint32_t upload_wait;    /* no ACK for this long after RESULT: send RESULT again */
    uint32_t silent;         /* nothing from the aggregator for this long: join again */
} fw_timers;

typedef struct {
    fw_config cfg;
    fw_timers timers;
    fw_state state;
    uint32_t round;
    uint32_t seq;              /* sequence number in the session (restarts with each session) */
    ft_replay guard;           /* frames from the aggregator: its session, round and window */
    uint32_t joins;            /* joins since boot: the second half of the join nonce */
    uint8_t nonce[FT_WIRE_NONCE_BYTES];           /* of the join in progress */
    uint8_t session_key[FT_WIRE_SESSION_KEY_BYTES];
    uint8_t arch_hash[FT_WIRE_ARCH_HASH_BYTES];   /* of the 64-10 head, as Model.arch_hash() */
    ft_offer offer;
    uint32_t have_chunks;      /* bitmap of model chunks received (FW_MODEL_CHUNKS <= 32) */
    uint32_t last_progress_ms;
    uint32_t last_byte_ms;     /* bytes still arriving: the line is not quiet */
    uint32_t last_heard_ms;
    uint32_t last_hello_ms;
    uint32_t rounds_done;
    int model_refused;         /* the aggregator offered a model this firmware cannot train */
    uint32_t frames_rejected;
    float params[FW_N_PARAMS];
    float global[FW_N_PARAMS];
    float arena[FW_ARENA_FLOATS];
    int32_t idx[FW_MAX_SAMPLES];
    ft_block_q8 blocks[FW_N_BLOCKS];
    ft_result result;
    int resend_on_ack;
    uint8_t payload[FT_WIRE_MAX_PAYLOAD];
    ft_cobs_decoder rx;
    uint8_t rx_buf[FT_WIRE_MAX_FRAME + FT_WIRE_CRC_BYTES];
    uint8_t frame[FT_WIRE_MAX_FRAME];
    uint8_t line[FT_COBS_LINE_MAX(FT_WIRE_MAX_FRAME)];
} fw_device;

/* One serial line of a frame of frame_bytes at baud (10 bits per byte: start, 8 data, stop). */
uint32_t fw_line_ms(uint32_t baud, uint32_t frame_bytes);
/* 0 on success, a negative ft_status / ft_wire_status on a bad configuration. */
int fw_init(fw_device *dev, const fw_config *cfg);
/* One received serial byte. */
void fw_on_byte(fw_device *dev, uint8_t byte, uint32_t now_ms);
/* Timers: hello, re-ask for the model, resend the result. Call every few milliseconds. */
void fw_poll(fw_device *dev, uint32_t now_ms);

#endif /* FW_DEVICE_H */
