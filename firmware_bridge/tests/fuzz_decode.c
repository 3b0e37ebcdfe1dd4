/* fuzz_decode.c - fuzz target for everything that reads bytes from the wire: the frame
 * decoder (with and without a replay guard), the payload parsers and the COBS stream decoder.
 *
 * libFuzzer (clang):  clang -g -O1 -fsanitize=fuzzer,address,undefined -DFT_LIBFUZZER \
 *                       -I.. fuzz_decode.c ../ft_*.c -o fuzz && ./fuzz -max_total_time=600
 * Built-in driver (any C99 compiler, `make fuzz` / `make asan`): mutates valid frames of every
 * type and their serial lines (bit flips, byte sets, truncation, extension, splices, header
 * fields), re-signs half of them so mutated but authentic frames reach the round, replay and
 * payload checks, and runs each through the target. Prints how many inputs it tried. A crash
 * or sanitizer report aborts the run with a non-zero status.
 */
#include "../ft_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t KEY[32] = "fuzz-key-fuzz-key-fuzz-key-fuzz!";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t reenc[FT_WIRE_MAX_FRAME];
    uint8_t dbuf[FT_WIRE_MAX_FRAME + FT_WIRE_CRC_BYTES];
    ft_cobs_decoder dec;
    ft_wire_header h, h2;
    ft_replay guard;
    const uint8_t *p, *q;
    size_t i, fl, n;
    int st;

    st = ft_wire_peek(data, size, &h);
    /* bound to the session the bytes name half of the time, so frames reach the tag and replay */
    if (size >= FT_WIRE_HEADER_BYTES && (data[0] & 1u) == 0) {
        ft_replay_bind(&guard, (uint32_t)data[28] | (uint32_t)data[29] << 8 | (uint32_t)data[30] << 16 |
                                   (uint32_t)data[31] << 24,
                       (uint32_t)data[24] | (uint32_t)data[25] << 8 | (uint32_t)data[26] << 16 |
                           (uint32_t)data[27] << 24,
                       (uint16_t)(data[22] | data[23] << 8));
    } else {
        ft_replay_bind(&guard, 0u, 0u, 0u);
    }
    ft_replay_init(&guard, size > 8 ? (uint32_t)data[8] : 0u);
    st = ft_wire_decode(data, size, KEY, sizeof KEY, &guard,
                        size > 0 && (data[size - 1] & 1u) ? FT_WIRE_ACCEPT_NEWER_ROUND : 0u, &h, &p);
    if (st == FT_WIRE_OK) {
        /* an accepted frame re-encodes to exactly the same bytes */
        if (ft_wire_encode(&h, p, KEY, sizeof KEY, reenc, sizeof reenc, &n) != FT_WIRE_OK ||
            n != size || memcmp(reenc, data, size) != 0) {
            abort();
        }
        /* and is refused the second time */
        if (ft_wire_decode(data, size, KEY, sizeof KEY, &guard, 0, &h2, &q) != FT_WIRE_ERR_REPLAY) {
            abort();
        }
        switch (h.type) {
        case FT_MSG_HELLO: { ft_hello m; st = ft_hello_unpack(p, h.payload_len, &m); break; }
        case FT_MSG_OFFER: { ft_offer m; st = ft_offer_unpack(p, h.payload_len, &m); break; }
        case FT_MSG_RESULT: { ft_result m; st = ft_result_unpack(p, h.payload_len, &m); break; }
        case FT_MSG_WELCOME: { ft_welcome m; st = ft_welcome_unpack(p, h.payload_len, &m); break; }
        case FT_MSG_ACK: {
            uint8_t t; uint16_t f, nb; const uint8_t *bm;
            st = ft_ack_parse(p, h.payload_len, &t, &f, &nb, &bm);
            break;
        }
        case FT_MSG_ERROR: {
            int16_t c; const uint8_t *txt; size_t tl;
            st = ft_error_parse(p, h.payload_len, &c, &txt, &tl);
            break;
        }
        default: break;
        }
    }
    /* the raw bytes as payloads of every layout */
    {
        ft_hello m1; ft_offer m2; ft_result m3; ft_welcome m4; uint8_t t; uint16_t f, nb; const uint8_t *bm;
        int16_t c; const uint8_t *txt; size_t tl;
        st = ft_hello_unpack(data, size, &m1);
        st = ft_offer_unpack(data, size, &m2);
        st = ft_welcome_unpack(data, size, &m4);
        st = ft_result_unpack(data, size, &m3);
        st = ft_ack_parse(data, size, &t, &f, &nb, &bm);
        st = ft_error_parse(data, size, &c, &txt, &tl);
    }
    /* the bytes as a serial line, into a budget that depends on the input */
    ft_cobs_decoder_init(&dec, dbuf, size > 0 ? (size_t)data[0] * 5u % sizeof dbuf : sizeof dbuf);
    for (i = 0; i < size; i++) {
        st = ft_cobs_feed(&dec, data[i], &fl);
        if (st == FT_WIRE_FRAME_READY && (fl + FT_WIRE_CRC_BYTES > dec.cap)) {
            abort();
        }
    }
    (void)st;
    return 0;
}

#ifndef FT_LIBFUZZER
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static size_t seed_frame(int which, uint8_t *out)
{
    uint8_t payload[FT_WIRE_MAX_PAYLOAD];
    ft_wire_header h;
    size_t n = 0, pn = 0, i;
    int st = FT_WIRE_OK;
    for (i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)next();
    memset(&h, 0, sizeof h);
    h.type = which % 8 == 7 ? (uint8_t)FT_MSG_WELCOME : (uint8_t)(1 + which % 8);
    h.session = (uint16_t)(next() % 3u);
    h.epoch = next() % 3u;
    h.run = next() % 3u;
    h.device_id = next();
    h.round = next() % 4u;
    h.seq = next() % 200u;
    h.chunk_count = 1;
    switch (h.type) {
    case FT_MSG_WELCOME: {
        ft_welcome m;
        memset(&m, 0, sizeof m);
        m.epoch = 1 + next() % 3u; m.session = (uint16_t)(1 + next() % 3u);
        st = ft_welcome_pack(&m, payload, sizeof payload); pn = FT_WELCOME_BYTES; break;
    }
    case FT_MSG_HELLO: { ft_hello m = {100, 1200, 1, 1, {0}}; st = ft_hello_pack(&m, payload, sizeof payload); pn = FT_HELLO_BYTES; break; }
    case FT_MSG_OFFER: {
        ft_offer m;
        memset(&m, 0, sizeof m);
        m.n_params = 1 + next() % 300000u; m.qk = 128; m.codec_version = 1; m.lr = 0.1f;
        m.epochs = 1; m.batch_size = 8;
        m.up_codec = FT_CODEC_INT8; m.down_codec = FT_CODEC_FLOAT32;
        m.model_bytes = ft_wire_download_bytes(m.down_codec, m.n_params);
        m.model_chunks = (uint16_t)ft_wire_model_chunks(m.n_params);
        m.update_chunks = (uint16_t)ft_wire_update_chunks(m.n_params);
        st = ft_offer_pack(&m, payload, sizeof payload); pn = FT_OFFER_BYTES; break;
    }
    case FT_MSG_MODEL_CHUNK: pn = 4u * (1 + next() % 288u); h.chunk_count = 5; h.chunk_index = 4; break;
    case FT_MSG_UPDATE_CHUNK: pn = 132u * (1 + next() % 8u); h.chunk_count = 9; h.chunk_index = 2; break;
    case FT_MSG_ACK: st = ft_ack_init(payload, sizeof payload, 4, 0, (uint16_t)(next() % 300u), &pn); break;
    case FT_MSG_ERROR: st = ft_error_pack(-3, (const uint8_t *)"oops", 4, payload, sizeof payload, &pn); break;
    default: { ft_result m = {10, 1, 0.5f, 0.5f, 3, 4, 1, 0, 2}; st = ft_result_pack(&m, payload, sizeof payload); pn = FT_RESULT_BYTES; break; }
    }
    h.payload_len = (uint16_t)pn;
    if (st != FT_WIRE_OK || ft_wire_encode(&h, payload, KEY, sizeof KEY, out, FT_WIRE_MAX_FRAME, &n) != FT_WIRE_OK) {
        abort();
    }
    return n;
}

/* Recompute the tag over the (mutated) header and payload, so the frame is authentic. */
static void resign(uint8_t *buf, size_t len)
{
    uint8_t tag[32];
    size_t n;
    ft_hmac_sha256_ctx c;
    if (len < FT_WIRE_HEADER_BYTES + FT_WIRE_TAG_BYTES) return;
    n = len - FT_WIRE_TAG_BYTES;
    ft_hmac_sha256_init(&c, KEY, sizeof KEY);
    ft_hmac_sha256_update(&c, buf, n);
    ft_hmac_sha256_finish(&c, tag);
    memcpy(buf + n, tag, FT_WIRE_TAG_BYTES);
}

int main(int argc, char **argv)
{
    static uint8_t buf[2 * FT_WIRE_MAX_FRAME + 64], other[FT_WIRE_MAX_FRAME], line[FT_COBS_LINE_MAX(FT_WIRE_MAX_FRAME)];
    unsigned long runs = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000ul, r;
    unsigned long accepted = 0;
    size_t len, olen, k, m;
    for (r = 0; r < runs; r++) {
        len = seed_frame((int)(next() % 8u), buf);
        m = 1 + next() % 4u;
        for (k = 0; k < m; k++) {
            switch (next() % 8u) {
            case 0: if (len > 0) buf[next() % len] ^= (uint8_t)(1u << (next() % 8u)); break;
            case 1: if (len > 0) buf[next() % len] = (uint8_t)next(); break;
            case 2: len = next() % (len + 1); break;
            case 3: { size_t add = next() % 64u; while (add-- && len < sizeof buf) buf[len++] = (uint8_t)next(); break; }
            case 4: /* header field: lengths, chunks, type, version */
                if (len > 23) buf[2 + next() % 22u] = (uint8_t)(next() % 3u == 0 ? 0xFF : next() % 10u);
                break;
            case 5: /* splice the tail of another frame */
                olen = seed_frame((int)(next() % 8u), other);
                if (len > 0) { size_t at = next() % len, from = next() % olen;
                    if (at + olen - from <= sizeof buf) { memcpy(buf + at, other + from, olen - from); len = at + olen - from; } }
                break;
            default: break; /* keep it valid */
            }
        }
        if (next() & 1u) resign(buf, len);
        if (LLVMFuzzerTestOneInput(buf, len) == 0 && len <= FT_WIRE_MAX_FRAME) {
            ft_wire_header h; const uint8_t *p; ft_replay g;
            ft_replay_bind(&g, 0u, 0u, 0u);
            if (ft_wire_peek(buf, len, &h) == FT_WIRE_OK) ft_replay_bind(&g, h.run, h.epoch, h.session);
            ft_replay_init(&g, len > 8 ? buf[8] : 0u);
            accepted += ft_wire_decode(buf, len, KEY, sizeof KEY, &g, 0, &h, &p) == FT_WIRE_OK;
        }
        /* the same bytes as a serial line, and the mutated frame properly COBS-framed */
        if (ft_cobs_encode_frame(buf, len, line, sizeof line, &olen) == FT_WIRE_OK) {
            if (next() & 1u) line[next() % olen] = (uint8_t)next();
            (void)LLVMFuzzerTestOneInput(line, olen);
        }
    }
    printf("fuzz_decode: %lu inputs (%lu frames + %lu serial lines), %lu accepted frames, 0 crashes\n",
           2 * runs, runs, runs, accepted);
    return 0;
}
#endif
