/*
 * fw_device.c - the example device loop (see fw_device.h): join, download the model, train,
 * upload the int8 update, repeat. The same message flow as `fedtiny client` (docs/network.md).
 */
#include "fw_device.h"

#include <math.h>
#include <string.h>

#define HELLO_EVERY_MS 500u
#define UPLOAD_LATENCY_MS 300u /* the aggregator may be busy closing a round */
#define SILENT_MS 2000u

/* Frame sizes (header + payload + tag) that the timers wait for. */
#define FRAME_BYTES(payload) (FT_WIRE_HEADER_BYTES + (payload) + FT_WIRE_TAG_BYTES)
#define ACK_FRAME FRAME_BYTES(FT_ACK_HEADER_BYTES + (FW_MODEL_CHUNKS + 7u) / 8u)
#define MODEL_CHUNK_FRAME FRAME_BYTES(FT_WIRE_MODEL_CHUNK_BYTES)
#define UPDATE_CHUNK_FRAME FRAME_BYTES(sizeof(ft_block_q8) * FW_N_BLOCKS < FT_WIRE_UPDATE_CHUNK_BYTES \
                                           ? sizeof(ft_block_q8) * FW_N_BLOCKS : FT_WIRE_UPDATE_CHUNK_BYTES)

/* Application error codes (docs/network.md). */
#define E_BUSY 100
#define E_ROUND_CLOSED 101
#define E_NOT_SELECTED 102
#define E_MODEL 104
#define E_FINISHED 105

static const ft_layer k_layers[1] = {
    {FT_LAYER_DENSE, 1, 1, FW_IN, 1, 1, FW_OUT, 0, 0, FW_IN * FW_OUT, 0, 0, 0, 0},
};
/* The layer structure as fedtiny.model.Model.arch_text() writes it for mlp:64-10; its SHA-256
 * (first 16 bytes) is the offer's architecture hash this firmware accepts. */
static const char k_arch_text[] = "fedtiny-arch/1\ndense 1x1x64 -> 1x1x10 k0\n";

/* Little-endian targets only (the wire's floats are LE); every fedtiny board is. */
static int little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* A frame of the session (or, in FW_JOINING, a join HELLO under the pre-shared key). */
static void send_frame(fw_device *dev, uint8_t type, uint32_t round, const uint8_t *payload,
                       size_t len, uint16_t chunk_index, uint16_t chunk_count) {
    ft_wire_header h;
    size_t n = 0, m = 0;
    int joining = dev->state == FW_JOINING;
    h.type = type;
    h.device_id = dev->cfg.device_id;
    h.round = round;
    h.seq = joining ? 0u : ++dev->seq;
    h.chunk_index = chunk_index;
    h.chunk_count = chunk_count;
    h.payload_len = (uint16_t)len;
    h.session = joining ? 0u : dev->guard.session;
    h.epoch = dev->guard.epoch;
    h.run = dev->guard.run;
    if (ft_wire_encode(&h, payload, joining ? dev->cfg.key : dev->session_key,
                       joining ? dev->cfg.key_len : sizeof dev->session_key, dev->frame, sizeof dev->frame,
                       &n) != FT_WIRE_OK)
        return;
    if (ft_cobs_encode_frame(dev->frame, n, dev->line, sizeof dev->line, &m) != FT_WIRE_OK)
        return;
    (void)dev->cfg.write(dev->cfg.write_ctx, dev->line, m);
}

static void send_hello(fw_device *dev, uint32_t now) {
    ft_hello h;
    h.n_samples = (uint32_t)dev->cfg.n_samples;
    h.max_frame = FT_WIRE_MAX_FRAME;
    h.capabilities = 1u;
    h.lib_version = FT_WIRE_VERSION;
    if (dev->state == FW_JOINING)
        memcpy(h.nonce, dev->nonce, sizeof h.nonce);
    else
        memset(h.nonce, 0, sizeof h.nonce);
    if (ft_hello_pack(&h, dev->payload, FT_HELLO_BYTES) == FT_WIRE_OK)
        send_frame(dev, FT_MSG_HELLO, 0, dev->payload, FT_HELLO_BYTES, 0, 1);
    dev->last_hello_ms = now;
}

/* Start a join: a new nonce (boot value, join counter); the session, if any, is dropped. The
 * join HELLO goes out on the next fw_poll(). */
static void start_join(fw_device *dev, uint32_t now) {
    uint32_t j = ++dev->joins, b = dev->cfg.seq0;
    int i;
    for (i = 0; i < 4; i++) {
        dev->nonce[i] = (uint8_t)(b >> (8 * i));
        dev->nonce[4 + i] = (uint8_t)(j >> (8 * i));
    }
    dev->state = FW_JOINING;
    dev->round = 0;
    ft_zeroize(dev->session_key, sizeof dev->session_key);
    dev->last_hello_ms = now - dev->timers.hello_every;
}

static void send_error(fw_device *dev, int16_t code, const char *text) {
    size_t n = 0;
    if (ft_error_pack(code, (const uint8_t *)text, strlen(text), dev->payload, sizeof dev->payload, &n) == FT_WIRE_OK)
        send_frame(dev, FT_MSG_ERROR, dev->round, dev->payload, n, 0, 1);
}

static void ask_model(fw_device *dev, uint32_t now) {
    size_t n = 0;
    uint16_t i;
    if (ft_ack_init(dev->payload, sizeof dev->payload, FT_MSG_MODEL_CHUNK, 0, dev->offer.model_chunks, &n) !=
        FT_WIRE_OK)
        return;
    for (i = 0; i < dev->offer.model_chunks; i++)
        if ((dev->have_chunks >> i) & 1u)
            if (ft_ack_set(dev->payload, n, i) != FT_WIRE_OK)
                return;
    send_frame(dev, FT_MSG_ACK, dev->round, dev->payload, n, 0, 1);
    dev->last_progress_ms = now;
}

static void send_result(fw_device *dev, uint32_t now) {
    if (ft_result_pack(&dev->result, dev->payload, FT_RESULT_BYTES) == FT_WIRE_OK)
        send_frame(dev, FT_MSG_RESULT, dev->round, dev->payload, FT_RESULT_BYTES, 0, 1);
    dev->resend_on_ack = 1;
    dev->last_progress_ms = now;
}

static void send_chunks(fw_device *dev, const uint8_t *bitmap, uint16_t n_bits) {
    const uint8_t *blocks = (const uint8_t *)dev->blocks;
    const size_t total = sizeof dev->blocks;
    uint16_t i;
    for (i = 0; i < FW_UPDATE_CHUNKS; i++) {
        size_t off = (size_t)i * FT_WIRE_UPDATE_CHUNK_BYTES;
        size_t len = total - off < FT_WIRE_UPDATE_CHUNK_BYTES ? total - off : FT_WIRE_UPDATE_CHUNK_BYTES;
        if (i < n_bits && ((bitmap[i / 8u] >> (i % 8u)) & 1u))
            continue;
        send_frame(dev, FT_MSG_UPDATE_CHUNK, dev->round, blocks + off, len, i, FW_UPDATE_CHUNKS);
    }
}

static uint32_t xorshift32(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* Local SGD from the downloaded global weights, then delta -> int8 blocks. */
static void train_and_upload(fw_device *dev, uint32_t now) {
    ft_net net;
    ft_sgd_hyper hp;
    double loss_sum = 0.0, ls;
    int64_t seen = 0, steps = 0, sn, st;
    uint32_t rng = (dev->offer.seed ^ (dev->round * 0x9E3779B1u) ^ (dev->cfg.device_id * 0x85EBCA6Bu)) | 1u;
    int32_t i, n = dev->cfg.n_samples;
    uint16_t e;
    int32_t batch = dev->offer.batch_size < FW_MAX_BATCH ? (int32_t)dev->offer.batch_size : FW_MAX_BATCH;

    memcpy(dev->params, dev->global, sizeof dev->params);
    net.layers = k_layers;
    net.n_layers = 1;
    net.n_params = FW_N_PARAMS;
    net.batch = batch;
    net.flags = dev->offer.prox_mu > 0.0f ? FT_TRAIN_PROX : 0u;
    if (ft_train_arena_floats(&net) > FW_ARENA_FLOATS ||
        ft_train_load(&net, dev->params, dev->global, dev->arena) != FT_OK) {
        send_error(dev, E_MODEL, "arena too small for this batch size");
        dev->state = FW_JOINING;
        return;
    }
    hp.lr = dev->offer.lr;
    hp.momentum = 0.0f;
    hp.weight_decay = 0.0f;
    hp.prox_mu = dev->offer.prox_mu;
    hp.seed = dev->offer.seed;
    hp.step0 = 0;
    for (i = 0; i < n; i++)
        dev->idx[i] = i;
    for (e = 0; e < dev->offer.epochs; e++) {
        for (i = n - 1; i > 0; i--) { /* Fisher-Yates shuffle, seeded by (seed, round, device) */
            int32_t j = (int32_t)(xorshift32(&rng) % (uint32_t)(i + 1));
            int32_t t = dev->idx[i];
            dev->idx[i] = dev->idx[j];
            dev->idx[j] = t;
        }
        if (ft_train_sgd_u8(&net, &hp, dev->cfg.x, dev->cfg.x_scale, dev->cfg.y, n, dev->idx, n, -1, dev->arena, &ls,
                            &sn, &st) != FT_OK) {
            send_error(dev, E_MODEL, "training diverged");
            dev->state = FW_JOINING;
            return;
        }
        loss_sum += ls;
        seen += sn;
        steps += st;
        hp.step0 += (uint64_t)st;
    }
    if (ft_train_store(&net, dev->arena, dev->params) != FT_OK)
        return;
    for (i = 0; i < FW_N_PARAMS; i++)
        dev->params[i] -= dev->global[i];
    if (ft_quantize_q8(dev->params, FW_N_PARAMS, NULL,
                       (dev->offer.codec_flags & 1u) ? FT_ROUND_STOCHASTIC : FT_ROUND_NEAREST,
                       dev->offer.seed ^ ((uint64_t)dev->round << 32) ^ dev->cfg.device_id, dev->blocks) != FT_OK) {
        send_error(dev, E_MODEL, "update is not finite");
        dev->state = FW_JOINING;
        return;
    }
    dev->result.n_samples = (uint32_t)n;
    dev->result.n_clients = 1;
    dev->result.loss = seen > 0 ? (float)(loss_sum / (double)seen) : 0.0f;
    dev->result.accuracy = NAN;
    dev->result.steps = (uint32_t)steps;
    dev->result.update_seed = dev->offer.seed;
    dev->result.update_flags = (uint8_t)(dev->offer.codec_flags & 1u);
    dev->result.reserved = 0;
    dev->result.update_chunks = FW_UPDATE_CHUNKS;
    dev->state = FW_UPLOADING;
    send_result(dev, now);
}

static void on_offer(fw_device *dev, const ft_wire_header *h, const uint8_t *pl, uint32_t now) {
    ft_offer o;
    if (ft_offer_unpack(pl, h->payload_len, &o) != FT_WIRE_OK) {
        dev->frames_rejected++;
        return;
    }
    if (h->round == dev->round && (dev->state == FW_DOWNLOADING || dev->state == FW_UPLOADING))
        return; /* the same offer again */
    dev->round = h->round;
    /* ft_offer_unpack checked that model_chunks and update_chunks follow the codecs and n_params */
    if (o.n_params != FW_N_PARAMS || !ft_ct_equal(o.arch_hash, dev->arch_hash, sizeof dev->arch_hash)) {
        send_error(dev, E_MODEL, "this firmware trains mlp:64-10, a 64-10 dense head (650 parameters)");
        dev->state = FW_REFUSED;
        dev->model_refused = 1;
        dev->last_progress_ms = now;
        return;
    }
    if (o.up_codec != FT_CODEC_INT8 || (o.down_codec != FT_CODEC_FLOAT32 && o.down_codec != FT_CODEC_INT8)) {
        send_error(dev, E_MODEL, "this firmware sends int8 updates (--codec int8*) and downloads float32 or int8 "
                                 "(--down-codec float32|int8)");
        dev->state = FW_REFUSED;
        dev->model_refused = 1;
        dev->last_progress_ms = now;
        return;
    }
    dev->offer = o;
    dev->have_chunks = 0;
    dev->state = FW_DOWNLOADING;
    ask_model(dev, now);
}

/* The int8 download, received into params: its FTQ8 header must name this model, then the blocks
 * are decoded into global by the kernel the aggregator ran (d * q, exact in float32), so the model
 * hash of the offer checks the result bit for bit. 0 when the message is not for this model. */
static int decode_q8_download(fw_device *dev) {
    const uint8_t *m = (const uint8_t *)dev->params;
    const uint32_t n = (uint32_t)m[8] | ((uint32_t)m[9] << 8) | ((uint32_t)m[10] << 16) | ((uint32_t)m[11] << 24);
    if (memcmp(m, "FTQ8", 4) != 0 || m[4] != 1u || m[6] != (FT_QK & 0xFFu) || m[7] != (FT_QK >> 8) ||
        n != FW_N_PARAMS)
        return 0;
    return ft_dequantize_q8((const ft_block_q8 *)(m + FT_CODEC_HEADER_BYTES), FW_N_PARAMS, dev->global) == FT_OK;
}

static void on_model_chunk(fw_device *dev, const ft_wire_header *h, const uint8_t *pl, uint32_t now) {
    const int q8 = dev->offer.down_codec == FT_CODEC_INT8;
    const size_t total = dev->offer.model_bytes; /* 2,600 (float32) or 808 (int8): both fit params */
    uint8_t *into = q8 ? (uint8_t *)dev->params : (uint8_t *)dev->global;
    size_t off, len;
    uint8_t digest[FT_SHA256_BYTES];
    if (dev->state != FW_DOWNLOADING || h->round != dev->round)
        return;
    off = (size_t)h->chunk_index * FT_WIRE_MODEL_CHUNK_BYTES;
    if (h->chunk_count != dev->offer.model_chunks || off >= total || total > sizeof dev->params)
        return;
    len = total - off < FT_WIRE_MODEL_CHUNK_BYTES ? total - off : FT_WIRE_MODEL_CHUNK_BYTES;
    if (h->payload_len != len) {
        dev->frames_rejected++;
        return;
    }
    memcpy(into + off, pl, len);
    dev->have_chunks |= 1u << h->chunk_index;
    dev->last_progress_ms = now;
    if (dev->have_chunks != (1u << dev->offer.model_chunks) - 1u)
        return;
    if (q8 && !decode_q8_download(dev)) {
        dev->frames_rejected++;
        dev->have_chunks = 0; /* not this model's message: fetch it again */
        ask_model(dev, now);
        return;
    }
    ft_sha256((const uint8_t *)dev->global, sizeof dev->global, digest);
    if (!ft_ct_equal(digest, dev->offer.model_hash, sizeof dev->offer.model_hash)) {
        dev->have_chunks = 0; /* corrupted somewhere: fetch it again */
        ask_model(dev, now);
        return;
    }
    train_and_upload(dev, now);
}

static void on_ack(fw_device *dev, const ft_wire_header *h, const uint8_t *pl, uint32_t now) {
    uint8_t type;
    uint16_t first, n_bits, i;
    const uint8_t *bitmap;
    int complete = 1;
    if (dev->state != FW_UPLOADING || h->round != dev->round)
        return;
    if (ft_ack_parse(pl, h->payload_len, &type, &first, &n_bits, &bitmap) != FT_WIRE_OK || first != 0) {
        dev->frames_rejected++;
        return;
    }
    if (type != FT_MSG_UPDATE_CHUNK)
        return;
    dev->last_progress_ms = now;
    for (i = 0; i < FW_UPDATE_CHUNKS; i++)
        if (i >= n_bits || !((bitmap[i / 8u] >> (i % 8u)) & 1u))
            complete = 0;
    if (complete) {
        dev->state = FW_DONE;
        dev->rounds_done++;
        return;
    }
    if (dev->resend_on_ack) { /* the answer to our RESULT: send what it misses, once */
        dev->resend_on_ack = 0;
        send_chunks(dev, bitmap, n_bits);
    }
}

static void on_error(fw_device *dev, const ft_wire_header *h, const uint8_t *pl, uint32_t now) {
    int16_t code;
    const uint8_t *text;
    size_t text_len;
    if (ft_error_parse(pl, h->payload_len, &code, &text, &text_len) != FT_WIRE_OK) {
        dev->frames_rejected++;
        return;
    }
    if (code == E_FINISHED) {
        dev->state = FW_FINISHED;
    } else if (code == E_MODEL && dev->state == FW_REFUSED) {
        dev->state = FW_FINISHED; /* the aggregator will not select this device again */
    } else if (code == E_BUSY && dev->state == FW_UPLOADING) {
        dev->last_progress_ms = now; /* the result is sent again after timers.upload_wait */
    } else if ((code == E_ROUND_CLOSED || code == E_NOT_SELECTED) && h->round == dev->round &&
               (dev->state == FW_DOWNLOADING || dev->state == FW_UPLOADING)) {
        dev->state = FW_WAITING;
    }
}

/* In FW_JOINING only the WELCOME that echoes the join's nonce is taken, once: it names the
 * aggregator's run, epoch and the new session, and both ends derive the session key from it. */
static void on_welcome(fw_device *dev, const uint8_t *frame, size_t len, uint32_t now) {
    ft_wire_header h;
    const uint8_t *pl;
    ft_welcome w;
    if (ft_wire_decode(frame, len, dev->cfg.key, dev->cfg.key_len, NULL, 0, &h, &pl) != FT_WIRE_OK ||
        h.type != FT_MSG_WELCOME || h.device_id != dev->cfg.device_id ||
        ft_welcome_unpack(pl, h.payload_len, &w) != FT_WIRE_OK || h.session != w.session ||
        h.epoch != w.epoch || h.run != ft_wire_run_tag(w.run_id) ||
        !ft_ct_equal(w.device_nonce, dev->nonce, sizeof dev->nonce) ||
        ft_session_key(dev->cfg.key, dev->cfg.key_len, dev->cfg.device_id, &w, dev->session_key) != FT_WIRE_OK) {
        dev->frames_rejected++;
        return;
    }
    ft_replay_bind(&dev->guard, h.run, h.epoch, h.session);
    memset(dev->nonce, 0, sizeof dev->nonce); /* a second WELCOME for this join is not taken */
    dev->seq = 0;
    dev->last_heard_ms = now;
    dev->state = FW_WAITING;
    send_hello(dev, now); /* the first frame of the session makes it the aggregator's current one */
}

static void on_frame(fw_device *dev, const uint8_t *frame, size_t len, uint32_t now) {
    ft_wire_header h;
    const uint8_t *pl;
    if (dev->state == FW_JOINING) {
        on_welcome(dev, frame, len, now);
        return;
    }
    if (ft_wire_decode(frame, len, dev->session_key, sizeof dev->session_key, &dev->guard,
                       FT_WIRE_ACCEPT_NEWER_ROUND, &h, &pl) != FT_WIRE_OK ||
        h.device_id != dev->cfg.device_id) {
        dev->frames_rejected++; /* stale_run / stale_epoch / stale_session among them */
        return;
    }
    dev->last_heard_ms = now;
    switch (h.type) {
    case FT_MSG_OFFER: on_offer(dev, &h, pl, now); break;
    case FT_MSG_MODEL_CHUNK: on_model_chunk(dev, &h, pl, now); break;
    case FT_MSG_ACK: on_ack(dev, &h, pl, now); break;
    case FT_MSG_ERROR: on_error(dev, &h, pl, now); break;
    default: break; /* RESULT: the round's summary, nothing to do */
    }
}

uint32_t fw_line_ms(uint32_t baud, uint32_t frame_bytes) {
    const uint64_t bits = 10u * (uint64_t)FT_COBS_LINE_MAX(frame_bytes);
    return (uint32_t)((bits * 1000u + baud - 1u) / baud);
}

/* Each wait is the longest the line itself can take plus a fixed allowance for the host side:
 * a timer shorter than one model-chunk line (105 ms at 115200 baud, 1.3 s at 9600) makes the
 * device ask again while the answer is still arriving, and the aggregator sends it twice. The
 * download is quiet only when no byte arrives either (fw_poll): a slow host that delivers a
 * chunk in bursts is still delivering it. */
static fw_timers derive_timers(uint32_t baud) {
    fw_timers t;
    const uint32_t model_line = fw_line_ms(baud, MODEL_CHUNK_FRAME);
    t.hello_every = HELLO_EVERY_MS + fw_line_ms(baud, FRAME_BYTES(FT_HELLO_BYTES));
    /* after our ACK: the ACK's own line, then one chunk line per chunk (progress is per chunk) */
    t.model_quiet = FW_LATENCY_MS + fw_line_ms(baud, ACK_FRAME) + model_line;
    /* after RESULT: RESULT out, the update chunks out, the aggregator's ACK back */
    t.upload_wait = UPLOAD_LATENCY_MS + fw_line_ms(baud, FRAME_BYTES(FT_RESULT_BYTES)) +
                    FW_UPDATE_CHUNKS * fw_line_ms(baud, UPDATE_CHUNK_FRAME) + fw_line_ms(baud, ACK_FRAME);
    /* the longest the aggregator is quiet while serving us is one model-chunk line */
    t.silent = SILENT_MS + 2u * model_line;
    return t;
}

int fw_init(fw_device *dev, const fw_config *cfg) {
    if (!little_endian() || cfg == NULL || cfg->write == NULL || cfg->x == NULL || cfg->y == NULL ||
        !(cfg->x_scale > 0.0f) || !isfinite(cfg->x_scale) || cfg->baud < 300u || cfg->n_samples < 1 ||
        cfg->n_samples > FW_MAX_SAMPLES || cfg->key_len < FT_WIRE_MIN_KEY_BYTES || cfg->key_len > FT_WIRE_MAX_KEY_BYTES)
        return FT_WIRE_ERR_ARG;
    memset(dev, 0, sizeof *dev);
    dev->cfg = *cfg;
    dev->timers = derive_timers(cfg->baud);
    dev->state = FW_JOINING;
    ft_replay_bind(&dev->guard, 0, 0, 0);
    ft_sha256((const uint8_t *)k_arch_text, sizeof k_arch_text - 1u, dev->session_key);
    memcpy(dev->arch_hash, dev->session_key, sizeof dev->arch_hash);
    ft_cobs_decoder_init(&dev->rx, dev->rx_buf, sizeof dev->rx_buf);
    start_join(dev, 0); /* the first join HELLO goes out on the first fw_poll() */
    return FT_WIRE_OK;
}

void fw_on_byte(fw_device *dev, uint8_t byte, uint32_t now_ms) {
    size_t len = 0;
    int st = ft_cobs_feed(&dev->rx, byte, &len);
    dev->last_byte_ms = now_ms;
    if (st == FT_WIRE_FRAME_READY)
        on_frame(dev, dev->rx_buf, len, now_ms);
    else if (st < 0)
        dev->frames_rejected++;
}

void fw_poll(fw_device *dev, uint32_t now) {
    int waiting;
    if (dev->state == FW_FINISHED)
        return;
    if (dev->state == FW_REFUSED) {
        if (now - dev->last_progress_ms > dev->timers.silent)
            dev->state = FW_FINISHED; /* told the aggregator; its answer did not come */
        return;
    }
    if (dev->state != FW_JOINING && now - dev->last_heard_ms > dev->timers.silent) {
        /* the aggregator went away, or restarted (its frames name another epoch): join again */
        start_join(dev, now);
        return;
    }
    waiting = dev->state == FW_JOINING || dev->state == FW_WAITING || dev->state == FW_DONE;
    if (waiting && now - dev->last_hello_ms >= dev->timers.hello_every)
        send_hello(dev, now);
    else if (dev->state == FW_DOWNLOADING && now - dev->last_progress_ms > dev->timers.model_quiet &&
             now - dev->last_byte_ms > dev->timers.model_quiet)
        ask_model(dev, now);
    else if (dev->state == FW_UPLOADING && now - dev->last_progress_ms > dev->timers.upload_wait)
        send_result(dev, now);
}
