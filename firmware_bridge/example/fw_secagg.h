/*
 * fw_secagg.h - the device side of SecAgg+ for the example firmware (docs/secagg.md "Firmware"):
 * the stage machine of fedtiny/privacy/secagg.py's Device, message for message and byte for byte,
 * in portable C99 with no malloc, on the crypto of firmware_bridge/ft_crypto.h.
 *
 *   SETUP payload       -> fw_secagg_setup       -> KEYS payload (96 bytes)
 *   KEY_LIST payload    -> fw_secagg_key_list    -> SHARES payload ({recipient u32, ciphertext 89})
 *   SHARE_LIST payload  -> fw_secagg_share_list  (keeps the shares, derives the mask seeds)
 *   delta (float32)     -> fw_secagg_encode      -> masked vector bytes, any slice [first, first+count)
 *   UNMASK payload      -> fw_secagg_unmask      -> UNMASK_SHARES payload ({owner, kind, x, share 32})
 *
 * Payload layouts: docs/secagg.md "Network messages" (one chunk each: a round of at most
 * FW_SA_MAX_DEVICES devices and FW_SA_MAX_NBRS neighbours fits, see the limits below). Each call
 * returns FW_SA_OK or a negative fw_sa_status naming why the device stops taking part in the round
 * (it then looks like a dropout to the aggregator, as DeviceAbort in Python). Secrets (key pairs,
 * the self-mask seed, the shares held, the mask seeds) are zeroized by fw_secagg_clear().
 */
#ifndef FW_SECAGG_H
#define FW_SECAGG_H

#include <stddef.h>
#include <stdint.h>

#include "ft_crypto.h"
#include "ft_wire.h"

#define FW_SA_MAX_DEVICES 64u  /* devices of a round this firmware can take part in */
#define FW_SA_MAX_NBRS 11u     /* neighbours: a KEY_LIST of 11 entries is one 1,100-byte chunk */
#define FW_SA_KEY 32u
#define FW_SA_SHARE_PLAIN 73u  /* owner u32, recipient u32, x u8, share of b 32, share of s 32 */
#define FW_SA_SHARE_CIPHER (FW_SA_SHARE_PLAIN + 16u)
#define FW_SA_KEYS_OUT 96u
#define FW_SA_SHARES_OUT (FW_SA_MAX_NBRS * (4u + FW_SA_SHARE_CIPHER))
#define FW_SA_UNMASK_OUT (FW_SA_MAX_NBRS * 38u)

typedef enum {
    FW_SA_OK = 0,
    FW_SA_BAD_PAYLOAD = -1,       /* a message that does not parse (layout, order, sizes)       */
    FW_SA_BAD_SETUP = -2,         /* k, t, min_survivors, bits or clip out of range             */
    FW_SA_NOT_SELECTED = -3,
    FW_SA_WRONG_STAGE = -4,
    FW_SA_TOO_FEW_NEIGHBOURS = -5,
    FW_SA_BAD_KEY = -6,           /* a stranger, a repeated key, or a low-order public key      */
    FW_SA_TOO_FEW_SURVIVORS = -7,
    FW_SA_INCONSISTENT_SURVIVORS = -8,
    FW_SA_TOO_BIG = -9,           /* more devices or neighbours than this firmware holds        */
    FW_SA_NO_RANDOM = -10,        /* the random source failed                                   */
    FW_SA_NONFINITE = -11,        /* the delta is not finite                                    */
    FW_SA_ARG = -12,
    FW_SA_CONFLICTING_UNMASK = -13, /* a second, different survivor set: never answered    */
    FW_SA_NO_DP = -14,              /* a distributed-DP round (SETUP's dp_bits != 0): this      */
                                    /* firmware has no noise stage, so it never sends a vector */
    FW_SA_AGAIN = 1                 /* the same UNMASK again: send the answer already given */
} fw_sa_status;

/* Fills out[0..n) with uniform random bytes (a hardware RNG on a board); 0 on success. */
typedef int (*fw_sa_random_fn)(void *ctx, uint8_t *out, size_t n);

/* FW_SECAGG=0 builds the firmware without secure aggregation (the link below becomes no-ops and
 * fw_secagg.c and the crypto need not be linked): the image for a 32 KB-flash part. */
#ifndef FW_SECAGG
#define FW_SECAGG 1
#endif
#if FW_SECAGG

enum { FW_SA_IDLE, FW_SA_KEYS_SENT, FW_SA_SHARES_SENT, FW_SA_SHARE_LIST, FW_SA_UNMASKED };

typedef struct {
    uint32_t id, round;
    int stage;
    uint8_t session[16], graph_seed[16];
    uint16_t n, k, t, m;
    uint8_t bits;
    double clip;
    uint32_t qmax;
    uint32_t devices[FW_SA_MAX_DEVICES];
    uint32_t nbrs[FW_SA_MAX_NBRS]; /* this device's neighbours, sorted */
    uint8_t c_sk[FW_SA_KEY], s_sk[FW_SA_KEY], b[FW_SA_KEY];
    uint8_t c_pk[FW_SA_KEY], s_pk[FW_SA_KEY];
    /* per neighbour (index into nbrs) */
    uint8_t has_key[FW_SA_MAX_NBRS], held[FW_SA_MAX_NBRS], held_x[FW_SA_MAX_NBRS];
    uint8_t c_shared[FW_SA_MAX_NBRS][FW_SA_KEY];  /* X25519(c_sk, c_pk of the neighbour) */
    uint8_t peer_s_pk[FW_SA_MAX_NBRS][FW_SA_KEY];
    uint8_t held_b[FW_SA_MAX_NBRS][FW_SA_KEY], held_s[FW_SA_MAX_NBRS][FW_SA_KEY];
    uint8_t seeds[(1u + FW_SA_MAX_NBRS) * FW_SA_KEY]; /* b, then the pairwise seeds */
    int8_t signs[1u + FW_SA_MAX_NBRS];
    uint8_t n_masks;
    float scale;                 /* the clip factor, set by fw_secagg_prepare */
    uint32_t survivors_crc;      /* of the UNMASK answered: one survivor set per round */
    uint32_t share_undecryptable;
    fw_sa_random_fn random;
    void *random_ctx;
} fw_secagg;

void fw_secagg_init(fw_secagg *sa, uint32_t device_id, fw_sa_random_fn random, void *random_ctx);
/* Zeroizes every secret and returns to FW_SA_IDLE (keeps id and the random source). */
void fw_secagg_clear(fw_secagg *sa);
int fw_secagg_setup(fw_secagg *sa, uint32_t round, const uint8_t *pl, size_t len, uint8_t out[FW_SA_KEYS_OUT]);
int fw_secagg_key_list(fw_secagg *sa, const uint8_t *pl, size_t len, uint8_t *out, size_t cap, size_t *out_len);
int fw_secagg_share_list(fw_secagg *sa, const uint8_t *pl, size_t len);
/* The clip factor from the whole delta (its L2 norm, summed as csrc's ft_l2sq_f32_ref). */
int fw_secagg_prepare(fw_secagg *sa, const float *delta, size_t n);
/* Bytes of the masked vector for elements [first, first + count): count * bits / 8 bytes. */
int fw_secagg_encode(const fw_secagg *sa, const float *delta, size_t first, size_t count,
                     const uint8_t round_key[32], uint8_t *out);
int fw_secagg_unmask(fw_secagg *sa, const uint8_t *pl, size_t len, uint8_t *out, size_t cap, size_t *out_len);
/* The stochastic-rounding key fedtiny.privacy.grid.derived_round_key(seed, round, device) gives. */
void fw_secagg_round_key(uint32_t seed, uint32_t round, uint32_t device, uint8_t out[32]);
/* fedtiny.seeds.derive_seed of up to 5 parts (exposed for tests). */
uint32_t fw_derive_seed(const uint32_t *parts, size_t n);

/* ---- the link: fw_secagg on the wire, for fw_device.c (frames 9, 11..17, ACK of type 9) -------
 * Follows fedtiny/net/secagg_round.py's DeviceSecAgg: answers each stage message once and a
 * repeated one with the same answer; uploads the masked vector in 1,152-byte chunks, encoded
 * chunk by chunk from the delta (no copy of the vector is kept), resent on the aggregator's ACK. */
#define FW_SA_CHUNK 1152u
typedef void (*fw_sa_send_fn)(void *ctx, uint8_t type, uint32_t round, const uint8_t *payload, size_t len,
                              uint16_t chunk_index, uint16_t chunk_count);

typedef struct {
    fw_secagg m;
    fw_sa_send_fn send;
    void *send_ctx;
    uint32_t round;            /* of the last SETUP taken */
    int32_t status;            /* 0, or why this device stopped taking part in the round (fw_sa_status) */
    uint32_t dropped;          /* frames dropped: another round, a list of several chunks, a bad ACK */
    uint8_t answered;          /* bit (type - 11): the stage message of that type was answered */
    uint8_t keys[FW_SA_KEYS_OUT];
    uint8_t shares[FW_SA_SHARES_OUT];
    size_t shares_len;
    uint8_t unmask[FW_SA_UNMASK_OUT];
    size_t unmask_len;
    const float *delta;        /* the caller's delta, kept until the vector is acknowledged */
    size_t n;
    uint8_t round_key[32];
    uint16_t n_chunks;
    uint32_t acked;            /* bitmap of the chunks the aggregator holds */
    int uploading, uploaded;
    uint32_t last_send_ms;
    uint8_t chunk[FW_SA_CHUNK];
} fw_sa_link;

void fw_sa_link_init(fw_sa_link *l, uint32_t device_id, fw_sa_random_fn random, void *random_ctx,
                     fw_sa_send_fn send, void *send_ctx);
/* A frame of the session: 0 if it is not a secure-aggregation frame, 1 if taken, 2 if taken and
 * the round is over for this device (its unmask answer went out). */
int fw_sa_link_frame(fw_sa_link *l, const ft_wire_header *h, const uint8_t *payload, uint32_t now_ms);
/* The trained delta of `round` (kept by the caller until the round is over); seed: the offer's. */
int fw_sa_link_delta(fw_sa_link *l, uint32_t round, const float *delta, size_t n, uint32_t seed, uint32_t now_ms);
/* Resend unacknowledged vector chunks after FW_SA_RESEND_MS. */
void fw_sa_link_poll(fw_sa_link *l, uint32_t now_ms);
#define FW_SA_RESEND_MS 1000u

#else /* FW_SECAGG == 0: a build without secure aggregation sits secure rounds out */
typedef struct {
    int unused;
} fw_sa_link;
typedef void (*fw_sa_send_fn)(void *ctx, uint8_t type, uint32_t round, const uint8_t *payload, size_t len,
                              uint16_t chunk_index, uint16_t chunk_count);
static inline void fw_sa_link_init(fw_sa_link *l, uint32_t device_id, fw_sa_random_fn random, void *random_ctx,
                                   fw_sa_send_fn send, void *send_ctx) {
    (void)l, (void)device_id, (void)random, (void)random_ctx, (void)send, (void)send_ctx;
}
static inline int fw_sa_link_frame(fw_sa_link *l, const ft_wire_header *h, const uint8_t *payload, uint32_t now_ms) {
    (void)l, (void)h, (void)payload, (void)now_ms;
    return 0;
}
static inline int fw_sa_link_delta(fw_sa_link *l, uint32_t round, const float *delta, size_t n, uint32_t seed,
                                   uint32_t now_ms) {
    (void)l, (void)round, (void)delta, (void)n, (void)seed, (void)now_ms;
    return -1;
}
static inline void fw_sa_link_poll(fw_sa_link *l, uint32_t now_ms) { (void)l, (void)now_ms; }
#endif /* FW_SECAGG */

#endif /* FW_SECAGG_H */
