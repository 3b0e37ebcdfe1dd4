/*
 * ft_frame.c - frames: the fixed 32-byte header, structural checks, HMAC-SHA256 tag,
 * round and replay checks, and the payload layouts (hello, offer, ack, error, result).
 * Byte layouts: docs/PROTOCOL.md "Frames". All little-endian, read and written byte by byte
 * so the code is the same on any CPU endianness and alignment.
 */
#include "ft_wire.h"

#include <string.h>

#define GET_U16(b, i) ((uint16_t)((uint16_t)(b)[(i)] | ((uint16_t)(b)[(i) + 1] << 8)))
#define GET_U32(b, i)                                                                     \
    ((uint32_t)(b)[(i)] | ((uint32_t)(b)[(i) + 1] << 8) | ((uint32_t)(b)[(i) + 2] << 16) |  \
     ((uint32_t)(b)[(i) + 3] << 24))

static void put_u16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int is_finite(float f)
{
    return ((float_bits(f) >> 23) & 0xFFu) != 0xFFu;
}

static int is_negative(float f)
{
    return (float_bits(f) >> 31) != 0 && (float_bits(f) & 0x7FFFFFFFu) != 0;
}

/* ---- Status names (Python's FrameError.reason; stable, part of the API) -------------------- */
static const char *const STATUS_NAMES[] = {
    "ok",          "bad_argument", "buffer_too_small",       "truncated",      "bad_magic",
    "bad_version", "unknown_type", "length_mismatch", "oversize",     "bad_chunk",
    "bad_tag",     "wrong_round",  "replay",        "bad_crc",        "cobs_error",
    "io_error",    "unknown_device", "bad_payload", "selftest_failed", "stale_run",
    "stale_epoch", "stale_session",
};

const char *ft_wire_status_name(int status)
{
    if (status == FT_WIRE_FRAME_READY) {
        return "frame_ready";
    }
    if (status <= 0 && -status < (int)(sizeof STATUS_NAMES / sizeof STATUS_NAMES[0])) {
        return STATUS_NAMES[-status];
    }
    return "unknown_status";
}

/* ---- Chunking ------------------------------------------------------------------------------ */
uint32_t ft_wire_model_chunks(uint32_t n_params)
{
    const uint32_t per = FT_WIRE_MODEL_CHUNK_BYTES / 4u; /* 288 float32 */
    return n_params / per + (n_params % per != 0);
}

uint32_t ft_wire_update_chunks(uint32_t n_params)
{
    const uint32_t per = FT_WIRE_UPDATE_CHUNK_BLOCKS * FT_WIRE_QK; /* 1024 parameters */
    return n_params / per + (n_params % per != 0);
}

uint32_t ft_wire_codec_block_values(uint8_t up_codec)
{
    switch (up_codec) {
    case FT_CODEC_INT8: case FT_CODEC_INT4: case FT_CODEC_INT2: return FT_WIRE_QK;
    case FT_CODEC_ROT1: return 4u * FT_WIRE_QK; /* 512 */
    default: return 0u;
    }
}

uint32_t ft_wire_codec_block_bytes(uint8_t up_codec)
{
    switch (up_codec) {
    case FT_CODEC_INT8: return FT_WIRE_BLOCK_BYTES;  /* 4 + 128 */
    case FT_CODEC_INT4: return 4u + 64u;
    case FT_CODEC_INT2: return 4u + 32u;
    case FT_CODEC_ROT1: return 4u + 64u;
    default: return 0u;
    }
}

uint32_t ft_wire_codec_chunk_blocks(uint8_t up_codec)
{
    const uint32_t bb = ft_wire_codec_block_bytes(up_codec);
    return bb == 0u ? 0u : FT_WIRE_MAX_PAYLOAD / bb;
}

uint32_t ft_wire_update_chunks_codec(uint8_t up_codec, uint32_t n_params)
{
    const uint32_t bv = ft_wire_codec_block_values(up_codec);
    uint32_t blocks, per;
    if (bv == 0u) {
        return 0u;
    }
    blocks = n_params / bv + (n_params % bv != 0);
    per = ft_wire_codec_chunk_blocks(up_codec);
    return blocks / per + (blocks % per != 0);
}

uint32_t ft_wire_download_bytes(uint8_t down_codec, uint32_t n_params)
{
    uint64_t bytes;
    if (n_params == 0u) {
        return 0u;
    }
    if (down_codec == FT_CODEC_FLOAT32) {
        bytes = 4u * (uint64_t)n_params;
    } else if (down_codec == FT_CODEC_INT8 || down_codec == FT_CODEC_INT4) {
        uint64_t blocks = n_params / FT_WIRE_QK + (n_params % FT_WIRE_QK != 0);
        bytes = FT_CODEC_HEADER_BYTES + blocks * ft_wire_codec_block_bytes(down_codec);
    } else {
        return 0u;
    }
    return bytes > 0xFFFFFFFFu ? 0u : (uint32_t)bytes;
}

uint32_t ft_wire_download_chunks(uint32_t model_bytes)
{
    return model_bytes / FT_WIRE_MODEL_CHUNK_BYTES + (model_bytes % FT_WIRE_MODEL_CHUNK_BYTES != 0);
}

/* ---- Header and structure ------------------------------------------------------------------ */
static int is_chunked(uint8_t type)
{
    return type == FT_MSG_MODEL_CHUNK || type == FT_MSG_UPDATE_CHUNK ||
           type == FT_MSG_MASKED_UPDATE || type == FT_MSG_SECAGG_SETUP ||
           (type >= FT_MSG_SECAGG_KEY_LIST && type <= FT_MSG_SECAGG_UNMASK_SHARES);
}

/* The chunked transfers an ACK bitmap acknowledges (the secure-aggregation lists are answered
 * by the next stage's message instead). */
static int is_acked(uint8_t type)
{
    return type == FT_MSG_MODEL_CHUNK || type == FT_MSG_UPDATE_CHUNK ||
           type == FT_MSG_MASKED_UPDATE;
}

/* A list of whole entries, at most one payload's worth; empty only as the list's one chunk
 * (checked by the reader, which sees the chunk count). */
static int entries_ok(uint16_t n, uint32_t entry)
{
    return n % entry == 0 && n <= (FT_WIRE_MAX_PAYLOAD / entry) * entry ? FT_WIRE_OK
                                                                         : FT_WIRE_ERR_LENGTH;
}

/* Payload size rules of each type; the payload bytes are needed for ack and error only. */
static int check_payload_size(uint8_t type, const uint8_t *p, uint16_t n)
{
    uint32_t need;
    switch (type) {
    case FT_MSG_HELLO:
        return n == FT_HELLO_BYTES ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_OFFER:
        return n == FT_OFFER_BYTES ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_WELCOME:
        return n == FT_WELCOME_BYTES ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_RESULT:
        return n == FT_RESULT_BYTES ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_MODEL_CHUNK:
        return n > 0 && n <= FT_WIRE_MODEL_CHUNK_BYTES && n % 4u == 0 ? FT_WIRE_OK
                                                                       : FT_WIRE_ERR_LENGTH;
    case FT_MSG_UPDATE_CHUNK: /* whole blocks of the round's codec: the receiver checks which */
        return n > 0 && n <= FT_WIRE_MAX_PAYLOAD && n % 4u == 0 ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_ACK:
        if (n < FT_ACK_HEADER_BYTES) {
            return FT_WIRE_ERR_LENGTH;
        }
        need = FT_ACK_HEADER_BYTES + ((uint32_t)GET_U16(p, 4) + 7u) / 8u;
        return n == need ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_ERROR:
        if (n < FT_ERROR_HEADER_BYTES) {
            return FT_WIRE_ERR_LENGTH;
        }
        need = FT_ERROR_HEADER_BYTES + (uint32_t)GET_U16(p, 2);
        return n == need ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_MASKED_UPDATE: /* b/8 bytes per parameter, b = 16 or 32 */
        return n > 0 && n % 2u == 0 ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_SECAGG_SETUP: /* the 56-byte head then ids: cut at multiples of 4 */
    case FT_MSG_SECAGG_UNMASK:
        return n > 0 && n % FT_SECAGG_ID_BYTES == 0 ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_SECAGG_KEYS:
        return n == FT_SECAGG_KEYS_BYTES ? FT_WIRE_OK : FT_WIRE_ERR_LENGTH;
    case FT_MSG_SECAGG_KEY_LIST:
        return entries_ok(n, FT_SECAGG_KEY_ENTRY_BYTES);
    case FT_MSG_SECAGG_SHARES:
    case FT_MSG_SECAGG_SHARE_LIST:
        return entries_ok(n, FT_SECAGG_SHARE_ENTRY_BYTES);
    case FT_MSG_SECAGG_UNMASK_SHARES:
        return entries_ok(n, FT_SECAGG_UNMASK_ENTRY_BYTES);
    default:
        return FT_WIRE_ERR_UNKNOWN_TYPE;
    }
}

static int check_chunk(uint8_t type, uint16_t index, uint16_t count)
{
    if (is_chunked(type)) {
        return count > 0 && index < count ? FT_WIRE_OK : FT_WIRE_ERR_BAD_CHUNK;
    }
    return index == 0 && count == 1 ? FT_WIRE_OK : FT_WIRE_ERR_BAD_CHUNK;
}

static int known_type(uint8_t type)
{
    /* 8 is reserved; 18 and above are not defined */
    return (type >= FT_MSG_HELLO && type <= FT_MSG_SECAGG_UNMASK_SHARES) &&
           type != FT_MSG_PARTIAL_SUM;
}

/* The order of the checks is normative (PROTOCOL.md): the first failing one is the reason. */
int ft_wire_peek(const uint8_t *frame, size_t len, ft_wire_header *hdr)
{
    uint16_t n;
    int st;

    if (frame == NULL || hdr == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len < FT_WIRE_HEADER_BYTES) {
        return FT_WIRE_ERR_TRUNCATED;
    }
    if (frame[0] != FT_WIRE_MAGIC0 || frame[1] != FT_WIRE_MAGIC1) {
        return FT_WIRE_ERR_BAD_MAGIC;
    }
    if (frame[2] != FT_WIRE_VERSION) {
        return FT_WIRE_ERR_BAD_VERSION;
    }
    if (!known_type(frame[3])) {
        return FT_WIRE_ERR_UNKNOWN_TYPE;
    }
    n = GET_U16(frame, 20);
    if (n > FT_WIRE_MAX_PAYLOAD ||
        n > FT_WIRE_MAX_FRAME - FT_WIRE_HEADER_BYTES - FT_WIRE_TAG_BYTES) {
        return FT_WIRE_ERR_OVERSIZE;
    }
    /* n <= 1152, so the sum cannot overflow */
    if (len < (size_t)FT_WIRE_HEADER_BYTES + n + FT_WIRE_TAG_BYTES) {
        return FT_WIRE_ERR_TRUNCATED;
    }
    if (len > (size_t)FT_WIRE_HEADER_BYTES + n + FT_WIRE_TAG_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    hdr->type = frame[3];
    hdr->device_id = GET_U32(frame, 4);
    hdr->round = GET_U32(frame, 8);
    hdr->seq = GET_U32(frame, 12);
    hdr->chunk_index = GET_U16(frame, 16);
    hdr->chunk_count = GET_U16(frame, 18);
    hdr->payload_len = n;
    hdr->session = GET_U16(frame, 22);
    hdr->epoch = GET_U32(frame, 24);
    hdr->run = GET_U32(frame, 28);
    st = check_chunk(hdr->type, hdr->chunk_index, hdr->chunk_count);
    if (st != FT_WIRE_OK) {
        return st;
    }
    return check_payload_size(hdr->type, frame + FT_WIRE_HEADER_BYTES, n);
}

static int key_ok(const uint8_t *key, size_t key_len)
{
    return key != NULL && key_len >= FT_WIRE_MIN_KEY_BYTES && key_len <= FT_WIRE_MAX_KEY_BYTES;
}

static void compute_tag(const uint8_t *key, size_t key_len, const uint8_t *header,
                        const uint8_t *payload, uint16_t n, uint8_t tag[FT_SHA256_BYTES])
{
    ft_hmac_sha256_ctx ctx;
    ft_hmac_sha256_init(&ctx, key, key_len);
    ft_hmac_sha256_update(&ctx, header, FT_WIRE_HEADER_BYTES);
    ft_hmac_sha256_update(&ctx, payload, n);
    ft_hmac_sha256_finish(&ctx, tag); /* zeroizes ctx */
}

int ft_wire_encode(const ft_wire_header *hdr, const uint8_t *payload, const uint8_t *key,
                   size_t key_len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t tag[FT_SHA256_BYTES];
    size_t total;
    uint16_t n;
    int st;

    if (hdr == NULL || out == NULL || out_len == NULL || !key_ok(key, key_len) ||
        (payload == NULL && hdr->payload_len > 0)) {
        return FT_WIRE_ERR_ARG;
    }
    *out_len = 0;
    n = hdr->payload_len;
    if (!known_type(hdr->type)) {
        return FT_WIRE_ERR_UNKNOWN_TYPE;
    }
    if (n > FT_WIRE_MAX_PAYLOAD || n > FT_WIRE_MAX_FRAME - FT_WIRE_HEADER_BYTES - FT_WIRE_TAG_BYTES) {
        return FT_WIRE_ERR_OVERSIZE;
    }
    st = check_chunk(hdr->type, hdr->chunk_index, hdr->chunk_count);
    if (st != FT_WIRE_OK) {
        return st;
    }
    st = check_payload_size(hdr->type, payload, n);
    if (st != FT_WIRE_OK) {
        return st;
    }
    total = (size_t)FT_WIRE_HEADER_BYTES + n + FT_WIRE_TAG_BYTES;
    if (cap < total) {
        return FT_WIRE_ERR_BUFFER;
    }
    out[0] = FT_WIRE_MAGIC0;
    out[1] = FT_WIRE_MAGIC1;
    out[2] = FT_WIRE_VERSION;
    out[3] = hdr->type;
    put_u32(out + 4, hdr->device_id);
    put_u32(out + 8, hdr->round);
    put_u32(out + 12, hdr->seq);
    put_u16(out + 16, hdr->chunk_index);
    put_u16(out + 18, hdr->chunk_count);
    put_u16(out + 20, n);
    put_u16(out + 22, hdr->session);
    put_u32(out + 24, hdr->epoch);
    put_u32(out + 28, hdr->run);
    if (n > 0) {
        memmove(out + FT_WIRE_HEADER_BYTES, payload, n); /* payload may already sit there */
    }
    compute_tag(key, key_len, out, out + FT_WIRE_HEADER_BYTES, n, tag);
    memcpy(out + FT_WIRE_HEADER_BYTES + n, tag, FT_WIRE_TAG_BYTES);
    ft_zeroize(tag, sizeof tag);
    *out_len = total;
    return FT_WIRE_OK;
}

/* ---- Replay window (RFC 4303 section 3.4.3 style, 64 sequence numbers wide) ----------------- */
void ft_replay_init(ft_replay *guard, uint32_t round)
{
    guard->round = round;
    guard->highest = 0;
    guard->seen = 0;
}

void ft_replay_bind(ft_replay *guard, uint32_t run, uint32_t epoch, uint16_t session)
{
    guard->run = run;
    guard->epoch = epoch;
    guard->session = session;
    ft_replay_init(guard, 0);
}

/* The session a frame names, checked before any hashing: a frame of another run, life or
 * session cannot be authentic now (its key is not this session's), so it is refused cheaply
 * and counted by what it claims. */
static int session_check(const ft_replay *g, const ft_wire_header *h)
{
    if (h->run != g->run) {
        return FT_WIRE_ERR_STALE_RUN;
    }
    if (h->epoch != g->epoch) {
        return FT_WIRE_ERR_STALE_EPOCH;
    }
    return h->session == g->session ? FT_WIRE_OK : FT_WIRE_ERR_STALE_SESSION;
}

/* Never shifts by 64 or more (undefined in C, and x86 would shift by count mod 64). */
static int replay_check(const ft_replay *g, uint32_t round, uint32_t seq, uint32_t flags)
{
    uint32_t behind;
    if (round != g->round) {
        return (flags & FT_WIRE_ACCEPT_NEWER_ROUND) && round > g->round ? FT_WIRE_OK
                                                                         : FT_WIRE_ERR_WRONG_ROUND;
    }
    if (g->seen == 0 || seq > g->highest) {
        return FT_WIRE_OK;
    }
    behind = g->highest - seq;
    if (behind >= FT_WIRE_REPLAY_WINDOW) {
        return FT_WIRE_ERR_REPLAY;
    }
    return ((g->seen >> behind) & 1u) ? FT_WIRE_ERR_REPLAY : FT_WIRE_OK;
}

static void replay_commit(ft_replay *g, uint32_t round, uint32_t seq)
{
    uint32_t shift;
    if (round != g->round || g->seen == 0) {
        g->round = round;
        g->highest = seq;
        g->seen = 1;
    } else if (seq > g->highest) {
        shift = seq - g->highest;
        g->seen = shift >= FT_WIRE_REPLAY_WINDOW ? 1u : (g->seen << shift) | 1u;
        g->highest = seq;
    } else if (g->highest - seq < FT_WIRE_REPLAY_WINDOW) { /* always, after replay_check */
        g->seen |= (uint64_t)1 << (g->highest - seq);
    }
}

int ft_wire_decode(const uint8_t *frame, size_t len, const uint8_t *key, size_t key_len,
                   ft_replay *guard, uint32_t flags, ft_wire_header *hdr, const uint8_t **payload)
{
    uint8_t tag[FT_SHA256_BYTES];
    ft_wire_header h;
    int st, same;

    if (hdr == NULL || payload == NULL || !key_ok(key, key_len)) {
        return FT_WIRE_ERR_ARG;
    }
    st = ft_wire_peek(frame, len, &h);
    if (st != FT_WIRE_OK) {
        return st;
    }
    if (guard != NULL) {
        st = session_check(guard, &h);
        if (st != FT_WIRE_OK) {
            return st;
        }
    }
    compute_tag(key, key_len, frame, frame + FT_WIRE_HEADER_BYTES, h.payload_len, tag);
    same = ft_ct_equal(tag, frame + FT_WIRE_HEADER_BYTES + h.payload_len, FT_WIRE_TAG_BYTES);
    ft_zeroize(tag, sizeof tag);
    if (!same) {
        return FT_WIRE_ERR_BAD_TAG;
    }
    if (guard != NULL) {
        st = replay_check(guard, h.round, h.seq, flags);
        if (st != FT_WIRE_OK) {
            return st;
        }
        replay_commit(guard, h.round, h.seq);
    }
    *hdr = h;
    *payload = frame + FT_WIRE_HEADER_BYTES;
    return FT_WIRE_OK;
}

/* ---- Payloads ------------------------------------------------------------------------------ */
int ft_hello_pack(const ft_hello *m, uint8_t *out, size_t cap)
{
    if (m == NULL || out == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (cap < FT_HELLO_BYTES) {
        return FT_WIRE_ERR_BUFFER;
    }
    if (m->max_frame < FT_WIRE_HEADER_BYTES + FT_OFFER_BYTES + FT_WIRE_TAG_BYTES ||
        m->max_frame > FT_WIRE_PROTOCOL_MAX_FRAME) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    put_u32(out, m->n_samples);
    put_u16(out + 4, m->max_frame);
    put_u16(out + 6, m->capabilities);
    put_u32(out + 8, m->lib_version);
    memcpy(out + 12, m->nonce, FT_WIRE_NONCE_BYTES);
    return FT_WIRE_OK;
}

int ft_hello_unpack(const uint8_t *in, size_t len, ft_hello *m)
{
    if (in == NULL || m == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len != FT_HELLO_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    m->n_samples = GET_U32(in, 0);
    m->max_frame = GET_U16(in, 4);
    m->capabilities = GET_U16(in, 6);
    m->lib_version = GET_U32(in, 8);
    memcpy(m->nonce, in + 12, FT_WIRE_NONCE_BYTES);
    if (m->max_frame < FT_WIRE_HEADER_BYTES + FT_OFFER_BYTES + FT_WIRE_TAG_BYTES ||
        m->max_frame > FT_WIRE_PROTOCOL_MAX_FRAME) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    return FT_WIRE_OK;
}

static int offer_valid(const ft_offer *m)
{
    const uint32_t model_bytes = ft_wire_download_bytes(m->down_codec, m->n_params);
    return m->n_params > 0 && m->codec_version == 1u && (m->codec_flags & ~3u) == 0 &&
           ft_wire_codec_block_values(m->up_codec) != 0u &&
           m->qk == ft_wire_codec_block_values(m->up_codec) &&
           !(m->up_codec == FT_CODEC_ROT1 && (m->codec_flags & 1u)) && /* its sign is deterministic */
           model_bytes != 0u && m->model_bytes == model_bytes && m->reserved == 0u &&
           is_finite(m->lr) && m->lr > 0.0f && m->epochs > 0 && m->batch_size > 0 &&
           m->model_chunks == ft_wire_download_chunks(model_bytes) &&
           m->update_chunks == ft_wire_update_chunks_codec(m->up_codec, m->n_params) &&
           is_finite(m->prox_mu) && !is_negative(m->prox_mu) && is_finite(m->fixed_scale) &&
           !is_negative(m->fixed_scale);
}

int ft_offer_pack(const ft_offer *m, uint8_t *out, size_t cap)
{
    if (m == NULL || out == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (cap < FT_OFFER_BYTES) {
        return FT_WIRE_ERR_BUFFER;
    }
    if (!offer_valid(m)) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    put_u32(out, m->n_params);
    put_u16(out + 4, m->qk);
    out[6] = m->codec_version;
    out[7] = m->codec_flags;
    memcpy(out + 8, m->model_hash, 16);
    put_u32(out + 24, float_bits(m->lr));
    put_u16(out + 28, m->epochs);
    put_u16(out + 30, m->batch_size);
    put_u32(out + 32, m->deadline_ms);
    put_u32(out + 36, m->seed);
    put_u16(out + 40, m->model_chunks);
    put_u16(out + 42, m->update_chunks);
    put_u32(out + 44, float_bits(m->prox_mu));
    put_u32(out + 48, float_bits(m->fixed_scale));
    memcpy(out + 52, m->arch_hash, FT_WIRE_ARCH_HASH_BYTES);
    out[68] = m->up_codec;
    out[69] = m->down_codec;
    put_u16(out + 70, m->reserved);
    put_u32(out + 72, m->model_bytes);
    return FT_WIRE_OK;
}

int ft_offer_unpack(const uint8_t *in, size_t len, ft_offer *m)
{
    if (in == NULL || m == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len != FT_OFFER_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    m->n_params = GET_U32(in, 0);
    m->qk = GET_U16(in, 4);
    m->codec_version = in[6];
    m->codec_flags = in[7];
    memcpy(m->model_hash, in + 8, 16);
    m->lr = bits_float(GET_U32(in, 24));
    m->epochs = GET_U16(in, 28);
    m->batch_size = GET_U16(in, 30);
    m->deadline_ms = GET_U32(in, 32);
    m->seed = GET_U32(in, 36);
    m->model_chunks = GET_U16(in, 40);
    m->update_chunks = GET_U16(in, 42);
    m->prox_mu = bits_float(GET_U32(in, 44));
    m->fixed_scale = bits_float(GET_U32(in, 48));
    memcpy(m->arch_hash, in + 52, FT_WIRE_ARCH_HASH_BYTES);
    m->up_codec = in[68];
    m->down_codec = in[69];
    m->reserved = GET_U16(in, 70);
    m->model_bytes = GET_U32(in, 72);
    return offer_valid(m) ? FT_WIRE_OK : FT_WIRE_ERR_BAD_PAYLOAD;
}

int ft_result_pack(const ft_result *m, uint8_t *out, size_t cap)
{
    if (m == NULL || out == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (cap < FT_RESULT_BYTES) {
        return FT_WIRE_ERR_BUFFER;
    }
    if (m->reserved != 0 || (m->update_flags & ~3u) != 0) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    put_u32(out, m->n_samples);
    put_u32(out + 4, m->n_clients);
    put_u32(out + 8, float_bits(m->loss));
    put_u32(out + 12, float_bits(m->accuracy));
    put_u32(out + 16, m->steps);
    put_u32(out + 20, m->update_seed);
    out[24] = m->update_flags;
    out[25] = 0;
    put_u16(out + 26, m->update_chunks);
    return FT_WIRE_OK;
}

int ft_result_unpack(const uint8_t *in, size_t len, ft_result *m)
{
    if (in == NULL || m == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len != FT_RESULT_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    m->n_samples = GET_U32(in, 0);
    m->n_clients = GET_U32(in, 4);
    m->loss = bits_float(GET_U32(in, 8));
    m->accuracy = bits_float(GET_U32(in, 12));
    m->steps = GET_U32(in, 16);
    m->update_seed = GET_U32(in, 20);
    m->update_flags = in[24];
    m->reserved = in[25];
    m->update_chunks = GET_U16(in, 26);
    if (m->reserved != 0 || (m->update_flags & ~3u) != 0) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    return FT_WIRE_OK;
}

/* ---- Sessions ------------------------------------------------------------------------------ */
uint32_t ft_wire_run_tag(const uint8_t run_id[FT_WIRE_RUN_ID_BYTES])
{
    return GET_U32(run_id, 0);
}

static int welcome_valid(const ft_welcome *m)
{
    return m->epoch > 0 && m->session > 0 && m->reserved == 0;
}

int ft_welcome_pack(const ft_welcome *m, uint8_t *out, size_t cap)
{
    if (m == NULL || out == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (cap < FT_WELCOME_BYTES) {
        return FT_WIRE_ERR_BUFFER;
    }
    if (!welcome_valid(m)) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    memcpy(out, m->run_id, FT_WIRE_RUN_ID_BYTES);
    put_u32(out + 8, m->epoch);
    put_u16(out + 12, m->session);
    put_u16(out + 14, 0);
    memcpy(out + 16, m->device_nonce, FT_WIRE_NONCE_BYTES);
    memcpy(out + 24, m->agg_nonce, FT_WIRE_NONCE_BYTES);
    return FT_WIRE_OK;
}

int ft_welcome_unpack(const uint8_t *in, size_t len, ft_welcome *m)
{
    if (in == NULL || m == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len != FT_WELCOME_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    memcpy(m->run_id, in, FT_WIRE_RUN_ID_BYTES);
    m->epoch = GET_U32(in, 8);
    m->session = GET_U16(in, 12);
    m->reserved = GET_U16(in, 14);
    memcpy(m->device_nonce, in + 16, FT_WIRE_NONCE_BYTES);
    memcpy(m->agg_nonce, in + 24, FT_WIRE_NONCE_BYTES);
    return welcome_valid(m) ? FT_WIRE_OK : FT_WIRE_ERR_BAD_PAYLOAD;
}

int ft_session_key(const uint8_t *key, size_t key_len, uint32_t device_id, const ft_welcome *w,
                   uint8_t out[FT_WIRE_SESSION_KEY_BYTES])
{
    static const uint8_t label[17] = {'f', 'e', 'd', 't', 'i', 'n', 'y', '/', '2',
                                      ' ', 's', 'e', 's', 's', 'i', 'o', 'n'};
    uint8_t id[4], payload[FT_WELCOME_BYTES];
    ft_hmac_sha256_ctx ctx;
    int st;
    if (!key_ok(key, key_len) || w == NULL || out == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    st = ft_welcome_pack(w, payload, sizeof payload);
    if (st != FT_WIRE_OK) {
        return st;
    }
    put_u32(id, device_id);
    ft_hmac_sha256_init(&ctx, key, key_len);
    ft_hmac_sha256_update(&ctx, label, sizeof label);
    ft_hmac_sha256_update(&ctx, id, sizeof id);
    ft_hmac_sha256_update(&ctx, payload, sizeof payload);
    ft_hmac_sha256_finish(&ctx, out); /* zeroizes ctx */
    return FT_WIRE_OK;
}

int ft_ack_init(uint8_t *payload, size_t cap, uint8_t acked_type, uint16_t first,
                uint16_t n_bits, size_t *payload_len)
{
    size_t n;
    if (payload == NULL || payload_len == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (!is_acked(acked_type) || (uint32_t)first + n_bits > 65536u) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    n = FT_ACK_HEADER_BYTES + ((size_t)n_bits + 7u) / 8u;
    if (n > FT_WIRE_MAX_PAYLOAD) {
        return FT_WIRE_ERR_OVERSIZE;
    }
    if (cap < n) {
        return FT_WIRE_ERR_BUFFER;
    }
    payload[0] = acked_type;
    payload[1] = 0;
    put_u16(payload + 2, first);
    put_u16(payload + 4, n_bits);
    memset(payload + FT_ACK_HEADER_BYTES, 0, n - FT_ACK_HEADER_BYTES);
    *payload_len = n;
    return FT_WIRE_OK;
}

int ft_ack_parse(const uint8_t *payload, size_t len, uint8_t *acked_type, uint16_t *first,
                 uint16_t *n_bits, const uint8_t **bitmap)
{
    uint16_t f, nb;
    if (payload == NULL || acked_type == NULL || first == NULL || n_bits == NULL ||
        bitmap == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len < FT_ACK_HEADER_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    f = GET_U16(payload, 2);
    nb = GET_U16(payload, 4);
    if (len != FT_ACK_HEADER_BYTES + ((size_t)nb + 7u) / 8u) {
        return FT_WIRE_ERR_LENGTH;
    }
    if (!is_acked(payload[0]) || payload[1] != 0 || (uint32_t)f + nb > 65536u) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    /* Bits past n_bits in the last byte must be 0: one meaning per byte string. */
    if ((nb & 7u) != 0 && (payload[len - 1] >> (nb & 7u)) != 0) {
        return FT_WIRE_ERR_BAD_PAYLOAD;
    }
    *acked_type = payload[0];
    *first = f;
    *n_bits = nb;
    *bitmap = payload + FT_ACK_HEADER_BYTES;
    return FT_WIRE_OK;
}

int ft_ack_set(uint8_t *payload, size_t len, uint16_t chunk)
{
    uint16_t f, nb;
    uint32_t bit;
    if (payload == NULL || len < FT_ACK_HEADER_BYTES) {
        return FT_WIRE_ERR_ARG;
    }
    f = GET_U16(payload, 2);
    nb = GET_U16(payload, 4);
    if (len != FT_ACK_HEADER_BYTES + ((size_t)nb + 7u) / 8u) {
        return FT_WIRE_ERR_LENGTH;
    }
    if (chunk < f || (uint32_t)chunk - f >= nb) {
        return FT_WIRE_ERR_BAD_CHUNK;
    }
    bit = (uint32_t)chunk - f;
    payload[FT_ACK_HEADER_BYTES + bit / 8u] |= (uint8_t)(1u << (bit & 7u));
    return FT_WIRE_OK;
}

int ft_error_pack(int16_t code, const uint8_t *text, size_t text_len, uint8_t *out, size_t cap,
                  size_t *out_len)
{
    if (out == NULL || out_len == NULL || (text == NULL && text_len > 0)) {
        return FT_WIRE_ERR_ARG;
    }
    if (text_len > FT_WIRE_MAX_PAYLOAD - FT_ERROR_HEADER_BYTES) {
        return FT_WIRE_ERR_OVERSIZE;
    }
    if (cap < FT_ERROR_HEADER_BYTES + text_len) {
        return FT_WIRE_ERR_BUFFER;
    }
    put_u16(out, (uint16_t)code);
    put_u16(out + 2, (uint16_t)text_len);
    if (text_len > 0) {
        memcpy(out + FT_ERROR_HEADER_BYTES, text, text_len);
    }
    *out_len = FT_ERROR_HEADER_BYTES + text_len;
    return FT_WIRE_OK;
}

int ft_error_parse(const uint8_t *in, size_t len, int16_t *code, const uint8_t **text,
                   size_t *text_len)
{
    uint16_t raw, n;
    if (in == NULL || code == NULL || text == NULL || text_len == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    if (len < FT_ERROR_HEADER_BYTES) {
        return FT_WIRE_ERR_LENGTH;
    }
    raw = GET_U16(in, 0);
    n = GET_U16(in, 2);
    if (len != (size_t)FT_ERROR_HEADER_BYTES + n) {
        return FT_WIRE_ERR_LENGTH;
    }
    /* two's complement i16, converted without implementation-defined behaviour */
    *code = raw < 0x8000u ? (int16_t)raw : (int16_t)(-(int32_t)(0x10000u - raw));
    *text = in + FT_ERROR_HEADER_BYTES;
    *text_len = n;
    return FT_WIRE_OK;
}
