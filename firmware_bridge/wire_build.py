"""cffi build script (out-of-line API mode) for fedtiny._wire: the C wire codec, the
secure-aggregation crypto of firmware_bridge/ft_crypto.h, and the aggregator's per-datagram path
on top of the codec (firmware_bridge/host/ft_rx.c: sockets, host only).

setup.py names it in cffi_modules and runs from the project root, so every path here is
relative to that root. The cdef repeats the public declarations of ft_wire.h that Python uses;
in API mode the C compiler checks them against the real header (struct layouts included).
"""
from cffi import FFI

SOURCES = ["firmware_bridge/ft_sha256.c", "firmware_bridge/ft_cobs.c", "firmware_bridge/ft_frame.c",
           "firmware_bridge/ft_chacha20.c", "firmware_bridge/ft_hkdf.c", "firmware_bridge/ft_poly1305.c",
           "firmware_bridge/ft_x25519.c", "firmware_bridge/ft_shamir.c", "firmware_bridge/host/ft_rx.c"]

CDEF = """
#define FT_WIRE_VERSION ...
#define FT_WIRE_HEADER_BYTES ...
#define FT_WIRE_TAG_BYTES ...
#define FT_WIRE_PROTOCOL_MAX_FRAME ...
#define FT_WIRE_MAX_FRAME ...
#define FT_WIRE_MAX_PAYLOAD ...
#define FT_WIRE_MIN_KEY_BYTES ...
#define FT_WIRE_MAX_KEY_BYTES ...
#define FT_WIRE_QK ...
#define FT_WIRE_BLOCK_BYTES ...
#define FT_WIRE_UPDATE_CHUNK_BLOCKS ...
#define FT_WIRE_UPDATE_CHUNK_BYTES ...
#define FT_WIRE_MODEL_CHUNK_BYTES ...
#define FT_WIRE_CRC_BYTES ...
#define FT_WIRE_REPLAY_WINDOW ...
#define FT_WIRE_ACCEPT_NEWER_ROUND ...
#define FT_WIRE_RUN_ID_BYTES ...
#define FT_WIRE_NONCE_BYTES ...
#define FT_WIRE_SESSION_KEY_BYTES ...
#define FT_WIRE_ARCH_HASH_BYTES ...
#define FT_CODEC_INT8 ...
#define FT_CODEC_INT4 ...
#define FT_CODEC_INT2 ...
#define FT_CODEC_ROT1 ...
#define FT_CODEC_FLOAT32 ...
#define FT_CODEC_HEADER_BYTES ...
#define FT_WELCOME_BYTES ...
#define FT_SHA256_BYTES ...
#define FT_HELLO_BYTES ...
#define FT_OFFER_BYTES ...
#define FT_RESULT_BYTES ...
#define FT_ACK_HEADER_BYTES ...
#define FT_ERROR_HEADER_BYTES ...

typedef enum {
    FT_MSG_HELLO = 1, FT_MSG_OFFER = 2, FT_MSG_MODEL_CHUNK = 3, FT_MSG_UPDATE_CHUNK = 4,
    FT_MSG_ACK = 5, FT_MSG_ERROR = 6, FT_MSG_RESULT = 7, FT_MSG_PARTIAL_SUM = 8,
    FT_MSG_MASKED_UPDATE = 9, FT_MSG_WELCOME = 10, FT_MSG_SECAGG_SETUP = 11, FT_MSG_SECAGG_KEYS = 12,
    FT_MSG_SECAGG_KEY_LIST = 13, FT_MSG_SECAGG_SHARES = 14, FT_MSG_SECAGG_SHARE_LIST = 15,
    FT_MSG_SECAGG_UNMASK = 16, FT_MSG_SECAGG_UNMASK_SHARES = 17
} ft_msg_type;

typedef enum {
    FT_WIRE_OK = 0, FT_WIRE_FRAME_READY = 1, FT_WIRE_ERR_ARG = -1, FT_WIRE_ERR_BUFFER = -2,
    FT_WIRE_ERR_TRUNCATED = -3, FT_WIRE_ERR_BAD_MAGIC = -4, FT_WIRE_ERR_BAD_VERSION = -5,
    FT_WIRE_ERR_UNKNOWN_TYPE = -6, FT_WIRE_ERR_LENGTH = -7, FT_WIRE_ERR_OVERSIZE = -8,
    FT_WIRE_ERR_BAD_CHUNK = -9, FT_WIRE_ERR_BAD_TAG = -10, FT_WIRE_ERR_WRONG_ROUND = -11,
    FT_WIRE_ERR_REPLAY = -12, FT_WIRE_ERR_BAD_CRC = -13, FT_WIRE_ERR_COBS = -14,
    FT_WIRE_ERR_IO = -15, FT_WIRE_ERR_UNKNOWN_DEVICE = -16, FT_WIRE_ERR_BAD_PAYLOAD = -17,
    FT_WIRE_ERR_SELFTEST = -18, FT_WIRE_ERR_STALE_RUN = -19, FT_WIRE_ERR_STALE_EPOCH = -20,
    FT_WIRE_ERR_STALE_SESSION = -21
} ft_wire_status;
#define FT_WIRE_ERR_LAST ...

const char *ft_wire_status_name(int status);

void ft_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
int ft_sha256_accel(int mode);
void ft_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                    uint8_t out[32]);
uint32_t ft_crc32(uint32_t crc, const uint8_t *data, size_t len);

int ft_cobs_encode_frame(const uint8_t *frame, size_t len, uint8_t *buf, size_t cap,
                         size_t *out_len);
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    ...;
} ft_cobs_decoder;
void ft_cobs_decoder_init(ft_cobs_decoder *dec, uint8_t *buf, size_t cap);
int ft_cobs_feed(ft_cobs_decoder *dec, uint8_t byte, size_t *frame_len);

typedef struct {
    uint8_t type;
    uint32_t device_id;
    uint32_t round;
    uint32_t seq;
    uint16_t chunk_index;
    uint16_t chunk_count;
    uint16_t payload_len;
    uint16_t session;
    uint32_t epoch;
    uint32_t run;
} ft_wire_header;
typedef struct {
    uint32_t run;
    uint32_t epoch;
    uint16_t session;
    uint32_t round;
    uint32_t highest;
    uint64_t seen;
} ft_replay;
void ft_replay_init(ft_replay *guard, uint32_t round);
void ft_replay_bind(ft_replay *guard, uint32_t run, uint32_t epoch, uint16_t session);
int ft_wire_encode(const ft_wire_header *hdr, const uint8_t *payload, const uint8_t *key,
                   size_t key_len, uint8_t *out, size_t cap, size_t *out_len);
int ft_wire_peek(const uint8_t *frame, size_t len, ft_wire_header *hdr);
int ft_wire_decode(const uint8_t *frame, size_t len, const uint8_t *key, size_t key_len,
                   ft_replay *guard, uint32_t flags, ft_wire_header *hdr, const uint8_t **payload);

typedef struct {
    uint32_t n_samples; uint16_t max_frame; uint16_t capabilities; uint32_t lib_version;
    uint8_t nonce[8];
} ft_hello;
typedef struct {
    uint8_t run_id[8]; uint32_t epoch; uint16_t session; uint16_t reserved;
    uint8_t device_nonce[8]; uint8_t agg_nonce[8];
} ft_welcome;
typedef struct {
    uint32_t n_params; uint16_t qk; uint8_t codec_version; uint8_t codec_flags;
    uint8_t model_hash[16]; float lr; uint16_t epochs; uint16_t batch_size;
    uint32_t deadline_ms; uint32_t seed; uint16_t model_chunks; uint16_t update_chunks;
    float prox_mu; float fixed_scale; uint8_t arch_hash[16];
    uint8_t up_codec; uint8_t down_codec; uint16_t reserved; uint32_t model_bytes;
} ft_offer;
typedef struct {
    uint32_t n_samples; uint32_t n_clients; float loss; float accuracy; uint32_t steps;
    uint32_t update_seed; uint8_t update_flags; uint8_t reserved; uint16_t update_chunks;
} ft_result;
int ft_ack_init(uint8_t *payload, size_t cap, uint8_t acked_type, uint16_t first,
                uint16_t n_bits, size_t *payload_len);
int ft_ack_set(uint8_t *payload, size_t len, uint16_t chunk);
int ft_ack_parse(const uint8_t *payload, size_t len, uint8_t *acked_type, uint16_t *first,
                 uint16_t *n_bits, const uint8_t **bitmap);
int ft_error_pack(int16_t code, const uint8_t *text, size_t text_len, uint8_t *out, size_t cap,
                  size_t *out_len);
int ft_error_parse(const uint8_t *in, size_t len, int16_t *code, const uint8_t **text,
                   size_t *text_len);
int ft_hello_pack(const ft_hello *m, uint8_t *out, size_t cap);
int ft_hello_unpack(const uint8_t *in, size_t len, ft_hello *m);
int ft_offer_pack(const ft_offer *m, uint8_t *out, size_t cap);
int ft_offer_unpack(const uint8_t *in, size_t len, ft_offer *m);
int ft_result_pack(const ft_result *m, uint8_t *out, size_t cap);
int ft_result_unpack(const uint8_t *in, size_t len, ft_result *m);
int ft_welcome_pack(const ft_welcome *m, uint8_t *out, size_t cap);
int ft_welcome_unpack(const uint8_t *in, size_t len, ft_welcome *m);
uint32_t ft_wire_run_tag(const uint8_t run_id[8]);
int ft_session_key(const uint8_t *key, size_t key_len, uint32_t device_id, const ft_welcome *w,
                   uint8_t out[32]);
uint32_t ft_wire_model_chunks(uint32_t n_params);
uint32_t ft_wire_update_chunks(uint32_t n_params);
uint32_t ft_wire_codec_block_values(uint8_t up_codec);
uint32_t ft_wire_codec_block_bytes(uint8_t up_codec);
uint32_t ft_wire_codec_chunk_blocks(uint8_t up_codec);
uint32_t ft_wire_update_chunks_codec(uint8_t up_codec, uint32_t n_params);
uint32_t ft_wire_download_bytes(uint8_t down_codec, uint32_t n_params);
uint32_t ft_wire_download_chunks(uint32_t model_bytes);
int ft_wire_self_test(void);

/* firmware_bridge/host/ft_rx.h: the aggregator's per-datagram path */
#define FT_RX_BATCH ...
#define FT_RX_HEADER_BYTES ...
typedef enum {
    FT_RX_OVERSIZE = 0, FT_RX_SOURCE_LIMITED = 1, FT_RX_BAD_CHUNK = 2, FT_RX_BAD_LENGTH = 3,
    FT_RX_DUPLICATE_CHUNK = 4, FT_RX_BAD_SCALE = 5, FT_RX_BAD_VALUE = 6, FT_RX_N_REASONS = 7
} ft_rx_reason;
const char *ft_rx_reason_name(int reason);
int ft_q8_check_blocks(const uint8_t *blocks, size_t len);
int ft_codec_check_blocks(uint8_t codec, const uint8_t *blocks, size_t len);
typedef struct {
    uint32_t device_id; uint8_t key[64]; uint8_t key_len; uint8_t selected; uint16_t since_ack;
    uint16_t session; int32_t slot; ft_replay *guard; ...;
} ft_rx_device;
typedef struct { ...; } ft_rx_source;
#define FT_RX_MAX_BLOCKED ...
typedef struct { uint8_t addr[16]; uint16_t port; uint8_t family; double until; ...; } ft_rx_blocked;
enum { FT_RX_EV_FRAME = 1, FT_RX_EV_ACK_DUE = 2, FT_RX_EV_COMPLETE = 3, FT_RX_EV_RAW = 4 };
typedef struct {
    uint8_t kind; uint8_t family; uint16_t port; uint8_t addr[16]; uint32_t device_index;
    ft_wire_header hdr; uint16_t len; uint8_t data[...];
} ft_rx_event;
typedef struct {
    ft_rx_device *devices; uint32_t n_devices; ft_rx_source *sources; uint32_t n_sources;
    float source_burst; float source_rate; uint32_t run; uint32_t epoch;
    uint32_t round; uint8_t round_open; uint8_t codec; uint16_t ack_every; uint32_t n_blocks; uint32_t n_chunks;
    uint32_t n_slots; size_t slot_stride; uint8_t *staging; uint8_t *received; uint32_t *count;
    uint64_t datagrams; uint64_t bytes; uint64_t staged; uint64_t wire_rejects[32];
    uint64_t rx_rejects[7];
    double block_seconds; ft_rx_blocked blocked[32]; uint8_t blocked_changed; uint64_t blocks; uint32_t n_blocked; int block_errno;
} ft_rx;
int ft_rx_filter(const ft_rx *rx, uint8_t *prog, uint32_t cap);
long long ft_rx_socket_drops(int fd);
int ft_rx_poll(ft_rx *rx, int fd, double now, uint32_t max_datagrams, ft_rx_event *events,
               uint32_t cap_events, uint32_t *n_events);
void ft_rx_penalize(ft_rx *rx, int family, const uint8_t *addr, uint16_t port, double now);
int ft_rx_datagram(ft_rx *rx, const uint8_t *data, size_t len, int truncated, int family,
                   const uint8_t *addr, uint16_t port, double now, ft_rx_event *ev);

/* ft_crypto.h: secure-aggregation crypto (the same C as the firmware's) */
void ft_chacha20_block(const uint8_t key[32], uint32_t counter, const uint8_t nonce[12], uint8_t out[64]);
int ft_chacha20_xor(const uint8_t key[32], uint32_t counter, const uint8_t nonce[12], const uint8_t *in,
                    uint8_t *out, size_t len);
#define FT_HKDF_SHA256_MAX_OKM ...
#define FT_SHAMIR_MAX_SHARES ...
void ft_hkdf_sha256_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                            uint8_t prk[32]);
int ft_hkdf_sha256_expand(const uint8_t prk[32], const uint8_t *info, size_t info_len, uint8_t *okm,
                          size_t okm_len);
int ft_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                   const uint8_t *info, size_t info_len, uint8_t *okm, size_t okm_len);
void ft_poly1305(const uint8_t key[32], const uint8_t *data, size_t len, uint8_t tag[16]);
int ft_aead_chacha20poly1305_encrypt(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                                     size_t aad_len, const uint8_t *pt, size_t len, uint8_t *ct,
                                     uint8_t tag[16]);
int ft_aead_chacha20poly1305_decrypt(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                                     size_t aad_len, const uint8_t *ct, size_t len, const uint8_t tag[16],
                                     uint8_t *pt);
int ft_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t u[32]);
void ft_x25519_public(uint8_t pub[32], const uint8_t secret[32]);
int ft_shamir_split(const uint8_t *secret, size_t len, uint8_t n, uint8_t t, const uint8_t *random,
                    uint8_t *shares);
int ft_shamir_combine(const uint8_t *shares, uint8_t t, size_t len, uint8_t *secret);
uint8_t ft_gf256_mul(uint8_t a, uint8_t b);
uint8_t ft_gf256_inv(uint8_t a);
void ft_zeroize(void *p, size_t n);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "fedtiny._wire",
    '#include "ft_wire.h"\n#include "ft_crypto.h"\n#include "ft_rx.h"',
    sources=SOURCES,
    include_dirs=["firmware_bridge", "firmware_bridge/host"],
    extra_compile_args=["-std=c99", "-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
