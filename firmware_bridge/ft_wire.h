/*
 * ft_wire.h - the fedtiny wire protocol in portable C99: frames, authentication, replay
 * protection, COBS serial framing with CRC-32, and the payload layouts of every message.
 *
 * The one header of the library (ft_sha256.c, ft_cobs.c, ft_frame.c). The same code runs in
 * microcontroller firmware and, through cffi (fedtiny._wire), in the desktop aggregator.
 * The byte layouts are specified in docs/PROTOCOL.md, section "Frames".
 *
 * Rules the code keeps: no malloc, no stdio, no global mutable state; every buffer belongs
 * to the caller and comes with its capacity; every length is checked before it is used, in
 * a form that cannot overflow (compare "need > cap - used", never "used + need > cap");
 * every function that can fail returns ft_wire_status and is FT_WIRE_MUST_CHECK.
 *
 * ---- Compile-time options (define before including, or with -D) -----------------------------
 *
 * FT_WIRE_MAX_FRAME      Largest frame (header + payload + tag) this build encodes or accepts,
 *                        in bytes. Default and protocol maximum 1200 (one UDP datagram that
 *                        never fragments on an IPv6 path). A firmware with a small serial
 *                        buffer may lower it (124..1200; 124 = the frame of an offer);
 *                        frames larger than it are refused as FT_WIRE_ERR_OVERSIZE. The chunk
 *                        sizes of the protocol do not change: a lowered build cannot receive
 *                        full model chunks.
 * FT_WIRE_SELFTEST       1 (default) compiles ft_wire_self_test() (FIPS 180-4 / RFC 4231 /
 *                        CRC-32 known answers, about 300 bytes of flash); 0 leaves it out.
 * FT_WIRE_MUST_CHECK     Attribute that makes ignoring a status a compiler warning. Default:
 *                        __attribute__((warn_unused_result)) on GCC and clang, empty elsewhere.
 * FT_WIRE_SHANI          1 (default on x86-64 with GCC or clang, 0 elsewhere) adds a SHA-256
 *                        block function on the x86 SHA extensions, chosen at run time by cpuid
 *                        and checked bit for bit against the portable one (tests/test_wire.py);
 *                        the host aggregator hashes every datagram. Its one piece of global
 *                        state is the cached cpuid answer (ft_sha256_accel). Firmware: 0.
 *
 * Resources (Cortex-M4, -Os, measured by `make cortex-m4`, see firmware_bridge/README.md):
 * 5,979 bytes of flash, no .data, no .bss; deepest stack 728 bytes (ft_wire_decode -> HMAC
 * key setup -> SHA-256 block, the -fstack-usage frames summed).
 */
#ifndef FT_WIRE_H
#define FT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef FT_WIRE_MAX_FRAME
#define FT_WIRE_MAX_FRAME 1200
#endif
#if FT_WIRE_MAX_FRAME < 124 || FT_WIRE_MAX_FRAME > 1200
#error "FT_WIRE_MAX_FRAME must be 124 (the smallest frame holding an offer) .. 1200"
#endif
#ifndef FT_WIRE_SELFTEST
#define FT_WIRE_SELFTEST 1
#endif
#ifndef FT_WIRE_SHANI
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FT_WIRE_SHANI 1
#else
#define FT_WIRE_SHANI 0
#endif
#endif
#ifndef FT_WIRE_MUST_CHECK
#if defined(__GNUC__) || defined(__clang__)
#define FT_WIRE_MUST_CHECK __attribute__((warn_unused_result))
#else
#define FT_WIRE_MUST_CHECK
#endif
#endif

/* ---- Protocol constants (docs/PROTOCOL.md "Frames"; changing one is a new version) ------- */
#define FT_WIRE_MAGIC0 0x46u              /* 'F' */
#define FT_WIRE_MAGIC1 0x54u              /* 'T' */
#define FT_WIRE_VERSION 2u
#define FT_WIRE_HEADER_BYTES 32u
#define FT_WIRE_TAG_BYTES 16u             /* HMAC-SHA256 truncated to 128 bits */
#define FT_WIRE_PROTOCOL_MAX_FRAME 1200u
#define FT_WIRE_MAX_PAYLOAD (FT_WIRE_PROTOCOL_MAX_FRAME - FT_WIRE_HEADER_BYTES - FT_WIRE_TAG_BYTES) /* 1152 */
#define FT_WIRE_MIN_KEY_BYTES 16u         /* a pre-shared key has at least 128 bits */
#define FT_WIRE_MAX_KEY_BYTES 64u         /* one SHA-256 block: keys are never pre-hashed */
#define FT_WIRE_QK 128u                   /* parameters per int8 block (FT_QK in csrc/) */
#define FT_WIRE_BLOCK_BYTES 132u          /* float32 scale + 128 int8 */
#define FT_WIRE_UPDATE_CHUNK_BLOCKS 8u
#define FT_WIRE_UPDATE_CHUNK_BYTES (FT_WIRE_UPDATE_CHUNK_BLOCKS * FT_WIRE_BLOCK_BYTES) /* 1056 */
#define FT_WIRE_MODEL_CHUNK_BYTES 1152u   /* 288 float32 parameters */
#define FT_WIRE_CRC_BYTES 4u
#define FT_WIRE_REPLAY_WINDOW 64u
#define FT_WIRE_RUN_ID_BYTES 8u           /* an aggregator run's random id */
#define FT_WIRE_NONCE_BYTES 8u            /* device and aggregator nonces of a session */
#define FT_WIRE_SESSION_KEY_BYTES 32u     /* HMAC-SHA256 output, the key of one session */
#define FT_WIRE_ARCH_HASH_BYTES 16u       /* OFFER: SHA-256 of the model's layer structure, cut */

/* Codecs named in OFFER (docs/PROTOCOL.md "OFFER"): the value is the bits per parameter. */
#define FT_CODEC_INT8 8u                  /* upload or download: FTQ8, 132-byte blocks of 128    */
#define FT_CODEC_INT4 4u                  /* upload or download: FTQ4, 68-byte blocks of 128     */
#define FT_CODEC_INT2 2u                  /* upload: FTQ2, 36-byte blocks of 128                 */
#define FT_CODEC_ROT1 1u                  /* upload: FTR1, 68-byte blocks of 512 (rotated 1 bit) */
#define FT_CODEC_FLOAT32 32u              /* download: the float32 LE model                      */
#define FT_CODEC_HEADER_BYTES 16u         /* the encoded update/model header (FTQ8, FTQ4, ...)   */

/* Message types (header byte 3). */
typedef enum {
    FT_MSG_HELLO = 1,        /* device -> aggregator: join, n_samples, limits            */
    FT_MSG_OFFER = 2,        /* aggregator -> device: round id, model size/hash, hparams */
    FT_MSG_MODEL_CHUNK = 3,  /* aggregator -> device: the download's bytes, chunked       */
    FT_MSG_UPDATE_CHUNK = 4, /* device -> aggregator: update blocks of the offer's codec   */
    FT_MSG_ACK = 5,          /* either way: bitmap of the chunks that arrived            */
    FT_MSG_ERROR = 6,        /* either way: status code + short text                     */
    FT_MSG_RESULT = 7,       /* either way: round result / metrics (weight n_k)          */
    FT_MSG_PARTIAL_SUM = 8,  /* RESERVED (hierarchical aggregation); refused (unknown_type) */
    FT_MSG_MASKED_UPDATE = 9,/* device -> aggregator: SecAgg masked vector, chunked      */
    FT_MSG_WELCOME = 10,     /* aggregator -> device: opens a session (run, epoch, nonces) */
    /* Secure aggregation (docs/secagg.md "Network messages"): payloads are lists of fixed-size
     * entries, cut at entry boundaries into chunks; the codec checks the entry size only. */
    FT_MSG_SECAGG_SETUP = 11,         /* agg -> device: 56-byte head, then device ids u32      */
    FT_MSG_SECAGG_KEYS = 12,          /* device -> agg: c_pk, s_pk, commitment (96 B)          */
    FT_MSG_SECAGG_KEY_LIST = 13,      /* agg -> device: {id u32, c_pk, s_pk, commitment}       */
    FT_MSG_SECAGG_SHARES = 14,        /* device -> agg: {recipient u32, ciphertext 89}         */
    FT_MSG_SECAGG_SHARE_LIST = 15,    /* agg -> device: {sender u32, ciphertext 89}            */
    FT_MSG_SECAGG_UNMASK = 16,        /* agg -> device: survivor ids u32                      */
    FT_MSG_SECAGG_UNMASK_SHARES = 17  /* device -> agg: {owner u32, kind u8, x u8, share 32}   */
} ft_msg_type;

/* Entry sizes of the secure-aggregation lists (bytes). */
#define FT_SECAGG_SETUP_HEAD_BYTES 56u
#define FT_SECAGG_KEYS_BYTES 96u
#define FT_SECAGG_KEY_ENTRY_BYTES 100u
#define FT_SECAGG_SHARE_ENTRY_BYTES 93u
#define FT_SECAGG_ID_BYTES 4u
#define FT_SECAGG_UNMASK_ENTRY_BYTES 38u

/* Status of every fallible call: 0 ok, 1 = a frame is ready (stream decoder), negative errors.
 * Each error is one specific reason; ft_wire_status_name() gives its stable snake_case name. */
typedef enum {
    FT_WIRE_OK = 0,
    FT_WIRE_FRAME_READY = 1,
    FT_WIRE_ERR_ARG = -1,            /* API misuse: NULL pointer, key length, bad field value */
    FT_WIRE_ERR_BUFFER = -2,         /* caller's output buffer is too small                  */
    FT_WIRE_ERR_TRUNCATED = -3,      /* fewer bytes than the header announces                */
    FT_WIRE_ERR_BAD_MAGIC = -4,
    FT_WIRE_ERR_BAD_VERSION = -5,    /* unknown version, or reserved header bits set        */
    FT_WIRE_ERR_UNKNOWN_TYPE = -6,   /* type 0, the reserved type 8, or a type > 17        */
    FT_WIRE_ERR_LENGTH = -7,         /* trailing bytes, or a payload size the type forbids   */
    FT_WIRE_ERR_OVERSIZE = -8,       /* payload > 1152 or frame > FT_WIRE_MAX_FRAME         */
    FT_WIRE_ERR_BAD_CHUNK = -9,      /* chunk count 0, index >= count, or chunked non-chunk  */
    FT_WIRE_ERR_BAD_TAG = -10,       /* authentication failed (wrong key or altered bytes)   */
    FT_WIRE_ERR_WRONG_ROUND = -11,   /* authentic, but not for the receiver's current round  */
    FT_WIRE_ERR_REPLAY = -12,        /* authentic, but this sequence number was seen/too old */
    FT_WIRE_ERR_BAD_CRC = -13,       /* serial frame: CRC-32 mismatch                        */
    FT_WIRE_ERR_COBS = -14,          /* serial frame: invalid COBS, or too short for a CRC   */
    FT_WIRE_ERR_IO = -15,            /* the output stream's callback failed                  */
    FT_WIRE_ERR_UNKNOWN_DEVICE = -16,/* no key for this device id (caller's lookup)          */
    FT_WIRE_ERR_BAD_PAYLOAD = -17,   /* payload field out of range (e.g. ack bitmap)         */
    FT_WIRE_ERR_SELFTEST = -18,      /* a known-answer vector did not match                  */
    FT_WIRE_ERR_STALE_RUN = -19,     /* the frame names another aggregator run               */
    FT_WIRE_ERR_STALE_EPOCH = -20,   /* ... this run, but another life (epoch) of it         */
    FT_WIRE_ERR_STALE_SESSION = -21  /* ... this life, but not the peer's current session    */
} ft_wire_status;
#define FT_WIRE_ERR_LAST FT_WIRE_ERR_STALE_SESSION /* the lowest status value */

/* Stable name of a status ("bad_tag", "replay", ...); "unknown_status" for other values. */
const char *ft_wire_status_name(int status);

/* ---- SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104), mbedtls-style ----------------------- */
#define FT_SHA256_BYTES 32u
#define FT_SHA256_BLOCK 64u

typedef struct {
    uint32_t state[8];
    uint32_t total_lo;   /* bytes hashed, low 32 bits  */
    uint32_t total_hi;   /* bytes hashed, high 32 bits */
    uint8_t buffer[FT_SHA256_BLOCK];
} ft_sha256_ctx;

typedef struct {
    ft_sha256_ctx inner;
    uint8_t opad[FT_SHA256_BLOCK]; /* key XOR 0x5c, kept for finish; zeroized after */
} ft_hmac_sha256_ctx;

void ft_sha256_init(ft_sha256_ctx *ctx);
void ft_sha256_update(ft_sha256_ctx *ctx, const uint8_t *data, size_t len);
/* Writes 32 bytes and zeroizes the context. */
void ft_sha256_finish(ft_sha256_ctx *ctx, uint8_t out[FT_SHA256_BYTES]);
void ft_sha256(const uint8_t *data, size_t len, uint8_t out[FT_SHA256_BYTES]);
/* Which SHA-256 block function runs: mode 0 forces the portable one, 1 re-detects the CPU's
 * SHA extensions, -1 only asks. Returns 1 when the accelerated one is in use (FT_WIRE_SHANI). */
int ft_sha256_accel(int mode);

/* Any key length (a key longer than 64 bytes is hashed first, RFC 2104). */
void ft_hmac_sha256_init(ft_hmac_sha256_ctx *ctx, const uint8_t *key, size_t key_len);
void ft_hmac_sha256_update(ft_hmac_sha256_ctx *ctx, const uint8_t *data, size_t len);
/* Writes 32 bytes and zeroizes the context (the key material in it included). */
void ft_hmac_sha256_finish(ft_hmac_sha256_ctx *ctx, uint8_t out[FT_SHA256_BYTES]);
void ft_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                    uint8_t out[FT_SHA256_BYTES]);

/* 1 if the n bytes are equal, 0 otherwise; time depends on n only. */
int ft_ct_equal(const uint8_t *a, const uint8_t *b, size_t n);
/* Overwrites n bytes with zeros in a way the compiler may not remove. */
void ft_zeroize(void *p, size_t n);

/* ---- CRC-32 (IEEE 802.3, reflected 0xEDB88320, init and xorout 0xFFFFFFFF) ----------------- */
/* Incremental: crc = ft_crc32(0, a, n); crc = ft_crc32(crc, b, m); check("123456789") = 0xCBF43926 */
uint32_t ft_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* ---- Output stream (nanopb pb_ostream_t style) --------------------------------------------- */
/* write() returns 0 on success, non-zero on failure. budget caps the bytes the stream takes:
 * exceeding it is FT_WIRE_ERR_BUFFER. The first error is kept in .error and every later
 * write is refused with it, so a caller may check once at the end. */
typedef struct ft_ostream ft_ostream;
struct ft_ostream {
    int (*write)(ft_ostream *stream, const uint8_t *data, size_t len);
    void *state;        /* callback's own state (for the buffer stream: the buffer) */
    size_t budget;      /* maximum bytes this stream accepts */
    size_t written;     /* bytes accepted so far */
    int error;          /* first error (ft_wire_status), 0 while none */
};
/* A stream writing into buf[0..cap). */
void ft_ostream_buffer(ft_ostream *stream, uint8_t *buf, size_t cap);
FT_WIRE_MUST_CHECK int ft_ostream_write(ft_ostream *stream, const uint8_t *data, size_t len);

/* ---- COBS serial framing -------------------------------------------------------------------
 * On a serial line a frame travels as  0x00 COBS(frame || CRC-32(frame) LE) 0x00 .  The leading
 * delimiter ends any partial frame left by a broken transfer, so the next frame is never lost.
 * Worst-case size of the encoded line bytes for a frame of n bytes: */
#define FT_COBS_LINE_MAX(n) ((n) + FT_WIRE_CRC_BYTES + ((n) + FT_WIRE_CRC_BYTES) / 254u + 1u + 2u)

/* Writes the line bytes of one frame to the stream. */
FT_WIRE_MUST_CHECK int ft_cobs_write_frame(ft_ostream *out, const uint8_t *frame, size_t len);
/* Same into buf[0..cap); *out_len = bytes written. */
FT_WIRE_MUST_CHECK int ft_cobs_encode_frame(const uint8_t *frame, size_t len, uint8_t *buf,
                                            size_t cap, size_t *out_len);

/* Streaming decoder, fed one byte at a time. The caller's buffer is its byte budget: a frame
 * (plus its 4-byte CRC) longer than cap is dropped as FT_WIRE_ERR_OVERSIZE. After any error
 * the decoder skips to the next 0x00 and starts over: it resynchronises by itself. */
typedef struct {
    uint8_t *buf;       /* caller's buffer: decoded bytes of the frame in progress */
    size_t cap;         /* its capacity */
    size_t len;         /* decoded bytes so far */
    uint8_t code;       /* bytes left in the current COBS group, counting its code byte */
    uint8_t zero_due;   /* the current group ends with an implicit 0x00 (code < 0xFF) */
    uint8_t skipping;   /* discarding input until the next delimiter after an error */
    uint8_t in_frame;   /* at least one non-delimiter byte seen since the last 0x00 */
} ft_cobs_decoder;

void ft_cobs_decoder_init(ft_cobs_decoder *dec, uint8_t *buf, size_t cap);
/* Feed one byte. Returns 0 (need more), FT_WIRE_FRAME_READY (the frame without its CRC is
 * buf[0..*frame_len), valid until the next call), or a negative error for the frame that just
 * ended or overflowed (FT_WIRE_ERR_COBS, FT_WIRE_ERR_BAD_CRC, FT_WIRE_ERR_OVERSIZE). Empty frames
 * (two delimiters in a row) are not errors. */
FT_WIRE_MUST_CHECK int ft_cobs_feed(ft_cobs_decoder *dec, uint8_t byte, size_t *frame_len);

/* ---- Frames --------------------------------------------------------------------------------- */
typedef struct {
    uint8_t type;          /* ft_msg_type */
    uint32_t device_id;    /* the device the frame is from or to; selects the key */
    uint32_t round;        /* round number; 0 = outside any round (hello, errors) */
    uint32_t seq;          /* sender's sequence number in its session (only grows) */
    uint16_t chunk_index;  /* 0 .. chunk_count-1; (0, 1) for unchunked types */
    uint16_t chunk_count;
    uint16_t payload_len;  /* 0 .. FT_WIRE_MAX_PAYLOAD */
    uint16_t session;      /* the session the frame belongs to; 0 = none (a join HELLO) */
    uint32_t epoch;        /* the aggregator's life (process start) within its run */
    uint32_t run;          /* the aggregator's run: its run id's first 4 bytes as u32 LE */
} ft_wire_header;

/* What a receiver keeps per peer (caller-owned, 32 bytes): the session the peer must name
 * (run, epoch, session), the current round, and the replay window of the sequence numbers
 * accepted in that round. A frame passes when it names exactly this session, its round
 * equals .round and its seq is above .highest, or within the 64 below it and not yet seen. */
typedef struct {
    uint32_t run;          /* the run id's first 4 bytes (u32 LE), as in the header */
    uint32_t epoch;
    uint16_t session;
    uint32_t round;        /* the receiver's current round with this device */
    uint32_t highest;      /* highest sequence number accepted in this round */
    uint64_t seen;         /* bit i: seq (highest - i) accepted; 0 = nothing yet this round */
} ft_replay;

/* Start a round: forget every sequence number seen (the session fields stay). */
void ft_replay_init(ft_replay *guard, uint32_t round);
/* Start a session: the (run, epoch, session) frames must name, round 0, nothing seen. */
void ft_replay_bind(ft_replay *guard, uint32_t run, uint32_t epoch, uint16_t session);

/* Decode flag: a frame for a round newer than guard->round is accepted and moves the guard to
 * that round (a device receiving the offer for the next round). Older rounds stay refused. */
#define FT_WIRE_ACCEPT_NEWER_ROUND 1u

/* Encodes header, hdr->payload_len bytes of payload and the tag into out[0..cap); *out_len =
 * frame size. The decoder's structural checks apply, so an encoded frame always decodes.
 * payload may be out + FT_WIRE_HEADER_BYTES (built in place). key: 16..64 bytes. */
FT_WIRE_MUST_CHECK int ft_wire_encode(const ft_wire_header *hdr, const uint8_t *payload,
                                      const uint8_t *key, size_t key_len, uint8_t *out,
                                      size_t cap, size_t *out_len);

/* Structural checks only (no authentication): fills *hdr so the caller can look up the key
 * of hdr->device_id. Never act on a peeked frame. */
FT_WIRE_MUST_CHECK int ft_wire_peek(const uint8_t *frame, size_t len, ft_wire_header *hdr);

/* Full decode: structure, then the session the frame names (run, epoch, session: cheap, before
 * any hashing), then the tag (constant time), then round and replay, all against guard (NULL:
 * none of these checks - only for a join HELLO and a WELCOME, see PROTOCOL.md). The guard is
 * updated only when the frame is accepted. *payload points into frame. key: the session key
 * for frames of a session, the device's pre-shared key for a join HELLO and a WELCOME. */
FT_WIRE_MUST_CHECK int ft_wire_decode(const uint8_t *frame, size_t len, const uint8_t *key,
                                      size_t key_len, ft_replay *guard, uint32_t flags,
                                      ft_wire_header *hdr, const uint8_t **payload);

/* ---- Payloads (fixed little-endian layouts; docs/PROTOCOL.md) ------------------------------- */
#define FT_HELLO_BYTES 20u
typedef struct {
    uint32_t n_samples;     /* local training samples (the FedAvg weight it will bring) */
    uint16_t max_frame;     /* largest frame the device accepts (124..1200) */
    uint16_t capabilities;  /* bit 0: float32 training, bit 1: int8-weight training */
    uint32_t lib_version;   /* sender's library version, informational */
    uint8_t nonce[FT_WIRE_NONCE_BYTES]; /* join HELLO: new for each join; in a session: 0 */
} ft_hello;

/* WELCOME: the aggregator's answer to a join HELLO, sent under the device's pre-shared key.
 * Its header names the same run, epoch and session as its payload. */
#define FT_WELCOME_BYTES 32u
typedef struct {
    uint8_t run_id[FT_WIRE_RUN_ID_BYTES];  /* the aggregator's run */
    uint32_t epoch;                        /* its life (>= 1) */
    uint16_t session;                      /* the new session's number (>= 1) */
    uint16_t reserved;                     /* 0 */
    uint8_t device_nonce[FT_WIRE_NONCE_BYTES]; /* echoed from the join HELLO */
    uint8_t agg_nonce[FT_WIRE_NONCE_BYTES];    /* fresh for this session */
} ft_welcome;

/* The run id's first 4 bytes as the header's u32 run field. */
uint32_t ft_wire_run_tag(const uint8_t run_id[FT_WIRE_RUN_ID_BYTES]);

/* The session key: HMAC-SHA256(key, "fedtiny/2 session" || device_id u32 LE || the 32-byte
 * WELCOME payload). Both ends compute it; every frame of the session is tagged with it. */
FT_WIRE_MUST_CHECK int ft_session_key(const uint8_t *key, size_t key_len, uint32_t device_id,
                                      const ft_welcome *w,
                                      uint8_t out[FT_WIRE_SESSION_KEY_BYTES]);

#define FT_OFFER_BYTES 76u
typedef struct {
    uint32_t n_params;      /* model parameters (1 .. 2^32-1) */
    uint16_t qk;            /* values per block of the upload codec: 128, or 512 (FT_CODEC_ROT1) */
    uint8_t codec_version;  /* encoded update version, 1 */
    uint8_t codec_flags;    /* requested: bit 0 stochastic rounding, bit 1 error feedback */
    uint8_t model_hash[16]; /* SHA-256 of the float32 LE model the device starts from (decoded), cut */
    float lr;               /* learning rate, finite and > 0 */
    uint16_t epochs;        /* local epochs, >= 1 */
    uint16_t batch_size;    /* >= 1 */
    uint32_t deadline_ms;   /* from the offer's arrival to the last accepted update chunk */
    uint32_t seed;          /* seed for shuffling and stochastic rounding */
    uint16_t model_chunks;  /* ceil(model_bytes / 1152) */
    uint16_t update_chunks; /* ft_wire_update_chunks_codec(up_codec, n_params) */
    float prox_mu;          /* FedProx mu, finite and >= 0 (0 = FedAvg) */
    float fixed_scale;      /* 0: per-block scales; > 0 reserved for secure aggregation */
    uint8_t arch_hash[FT_WIRE_ARCH_HASH_BYTES]; /* SHA-256 of the layer structure, first 16 B */
    uint8_t up_codec;       /* the update the device sends: FT_CODEC_INT8/INT4/INT2/ROT1 */
    uint8_t down_codec;     /* the model chunks carry: FT_CODEC_FLOAT32/INT8/INT4 */
    uint16_t reserved;      /* 0 */
    uint32_t model_bytes;   /* ft_wire_download_bytes(down_codec, n_params) */
} ft_offer;

#define FT_RESULT_BYTES 28u
typedef struct {
    uint32_t n_samples;     /* device: its weight n_k; aggregator: sum of n_k in the round */
    uint32_t n_clients;     /* device: 1; aggregator: updates averaged */
    float loss;             /* device: mean training loss; aggregator: evaluation loss (NaN: none) */
    float accuracy;         /* NaN when not measured */
    uint32_t steps;         /* device: SGD steps; aggregator: 0 */
    uint32_t update_seed;   /* device: Int8Update seed field; aggregator: 0 */
    uint8_t update_flags;   /* device: Int8Update flags field */
    uint8_t reserved;       /* 0 */
    uint16_t update_chunks; /* device: update chunks it will send */
} ft_result;

#define FT_ACK_HEADER_BYTES 6u
/* Ack payload: u8 acked type (3, 4 or 9), u8 reserved 0, u16 first chunk, u16 n_bits, then
 * ceil(n_bits/8) bitmap bytes, bit i (LSB first in byte i/8) = chunk first+i arrived. */
FT_WIRE_MUST_CHECK int ft_ack_init(uint8_t *payload, size_t cap, uint8_t acked_type,
                                   uint16_t first, uint16_t n_bits, size_t *payload_len);
FT_WIRE_MUST_CHECK int ft_ack_set(uint8_t *payload, size_t len, uint16_t chunk);
/* Checks an ack payload; fills the fields; *bitmap points into payload. */
FT_WIRE_MUST_CHECK int ft_ack_parse(const uint8_t *payload, size_t len, uint8_t *acked_type,
                                    uint16_t *first, uint16_t *n_bits, const uint8_t **bitmap);

#define FT_ERROR_HEADER_BYTES 4u
/* Error payload: i16 code (an ft_wire_status, or >= 100 an application code), u16 text length,
 * then that many bytes of UTF-8 text (no terminator). */

FT_WIRE_MUST_CHECK int ft_error_pack(int16_t code, const uint8_t *text, size_t text_len,
                                     uint8_t *out, size_t cap, size_t *out_len);
FT_WIRE_MUST_CHECK int ft_error_parse(const uint8_t *in, size_t len, int16_t *code,
                                      const uint8_t **text, size_t *text_len);

FT_WIRE_MUST_CHECK int ft_hello_pack(const ft_hello *m, uint8_t *out, size_t cap);
FT_WIRE_MUST_CHECK int ft_hello_unpack(const uint8_t *in, size_t len, ft_hello *m);
FT_WIRE_MUST_CHECK int ft_offer_pack(const ft_offer *m, uint8_t *out, size_t cap);
FT_WIRE_MUST_CHECK int ft_offer_unpack(const uint8_t *in, size_t len, ft_offer *m);
FT_WIRE_MUST_CHECK int ft_result_pack(const ft_result *m, uint8_t *out, size_t cap);
FT_WIRE_MUST_CHECK int ft_result_unpack(const uint8_t *in, size_t len, ft_result *m);
FT_WIRE_MUST_CHECK int ft_welcome_pack(const ft_welcome *m, uint8_t *out, size_t cap);
FT_WIRE_MUST_CHECK int ft_welcome_unpack(const uint8_t *in, size_t len, ft_welcome *m);

/* Chunk counts of the protocol (0 when n_params is 0): a float32 model and an int8 update. */
uint32_t ft_wire_model_chunks(uint32_t n_params);
uint32_t ft_wire_update_chunks(uint32_t n_params);

/* Per codec (0 for a codec that is not one of the FT_CODEC_* of its direction, or n_params 0).
 * An update chunk holds floor(1152 / block bytes) whole blocks: 8 int8, 16 int4, 32 int2, 16 rot1. */
uint32_t ft_wire_codec_block_values(uint8_t up_codec);   /* 128, or 512 for ROT1 */
uint32_t ft_wire_codec_block_bytes(uint8_t up_codec);    /* 132, 68, 36, 68 */
uint32_t ft_wire_codec_chunk_blocks(uint8_t up_codec);   /* 8, 16, 32, 16 */
uint32_t ft_wire_update_chunks_codec(uint8_t up_codec, uint32_t n_params);
/* Bytes of the download: 4 n (float32) or 16 + blocks (FTQ8, FTQ4); 0 when over 2^32-1. */
uint32_t ft_wire_download_bytes(uint8_t down_codec, uint32_t n_params);
/* Model chunks of a download of that many bytes: ceil(bytes / 1152). */
uint32_t ft_wire_download_chunks(uint32_t model_bytes);

#if FT_WIRE_SELFTEST
/* Known-answer tests: SHA-256 (FIPS 180-4 "abc", two-block), HMAC (RFC 4231 cases 1, 2),
 * CRC-32 check value. FT_WIRE_OK or FT_WIRE_ERR_SELFTEST. */
FT_WIRE_MUST_CHECK int ft_wire_self_test(void);
#endif

#ifdef __cplusplus
}
#endif
#endif /* FT_WIRE_H */
