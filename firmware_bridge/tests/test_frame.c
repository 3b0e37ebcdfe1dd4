/* test_frame.c - frames: a round trip of every message type, every rejection with its own
 * reason (truncated at every length, a flipped bit anywhere, wrong key, version, type, size,
 * chunk, round, replay), the replay window's edges, payload layouts and status names. */
#include "../ft_wire.h"
#include "check.h"

static const uint8_t KEY[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t OTHER_KEY[32] = "fedcba9876543210fedcba9876543210";

static size_t make(uint8_t type, uint32_t round, uint32_t seq, uint16_t idx, uint16_t cnt,
                   const uint8_t *payload, uint16_t n, uint8_t *out)
{
    ft_wire_header h;
    size_t len = 0;
    int st;
    h.type = type;
    h.device_id = 0xA1B2C3D4u;
    h.round = round;
    h.seq = seq;
    h.chunk_index = idx;
    h.chunk_count = cnt;
    h.payload_len = n;
    st = ft_wire_encode(&h, payload, KEY, sizeof KEY, out, FT_WIRE_MAX_FRAME, &len);
    CHECK_EQ_INT(st, FT_WIRE_OK);
    return len;
}

static int decode(const uint8_t *f, size_t len, ft_replay *g, uint32_t flags)
{
    ft_wire_header h;
    const uint8_t *p;
    return ft_wire_decode(f, len, KEY, sizeof KEY, g, flags, &h, &p);
}

static void set_u16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

int main(void)
{
    static uint8_t payload[FT_WIRE_MAX_PAYLOAD], frame[FT_WIRE_MAX_FRAME + 8], copy[FT_WIRE_MAX_FRAME + 8];
    ft_wire_header h;
    const uint8_t *p;
    ft_replay g;
    size_t len, i, n;
    int st, t;
    ft_hello hello = {60000u, 1200u, 3u, 0x000100u}, hello2;
    ft_offer offer, offer2;
    ft_result res = {600u, 1u, 0.25f, 0.875f, 94u, 0xDEADBEEFu, 3u, 0u, 195u}, res2;
    uint8_t acked;
    uint16_t first, nbits;
    const uint8_t *bitmap;
    int16_t code;
    const uint8_t *text;
    size_t text_len;

    CHECK_EQ_INT(ft_wire_self_test(), FT_WIRE_OK);
    CHECK_EQ_INT(FT_WIRE_HEADER_BYTES + FT_WIRE_UPDATE_CHUNK_BYTES + FT_WIRE_TAG_BYTES <= 1200, 1);
    CHECK_EQ_INT(FT_WIRE_HEADER_BYTES + FT_WIRE_MODEL_CHUNK_BYTES + FT_WIRE_TAG_BYTES <= 1200, 1);

    /* ---- payload layouts round trip ---- */
    memset(&offer, 0, sizeof offer);
    offer.n_params = 199210u;
    offer.qk = 128;
    offer.codec_version = 1;
    offer.codec_flags = 1;
    for (i = 0; i < 16; i++) offer.model_hash[i] = (uint8_t)(0xF0u + i);
    offer.lr = 0.05f;
    offer.epochs = 5;
    offer.batch_size = 32;
    offer.deadline_ms = 30000u;
    offer.seed = 7u;
    offer.model_chunks = (uint16_t)ft_wire_model_chunks(offer.n_params);
    offer.update_chunks = (uint16_t)ft_wire_update_chunks(offer.n_params);
    CHECK_EQ_INT(offer.model_chunks, 692);   /* ceil(199210 / 288) */
    CHECK_EQ_INT(offer.update_chunks, 195);  /* ceil(1557 blocks / 8) */
    offer.prox_mu = 0.0f;
    offer.fixed_scale = 0.0f;
    CHECK_EQ_INT(ft_offer_pack(&offer, payload, sizeof payload), FT_WIRE_OK);
    CHECK_EQ_INT(ft_offer_unpack(payload, FT_OFFER_BYTES, &offer2), FT_WIRE_OK);
    CHECK_MEM(&offer, &offer2, sizeof offer);
    CHECK_EQ_INT(ft_offer_unpack(payload, FT_OFFER_BYTES - 1, &offer2), FT_WIRE_ERR_LENGTH);
    offer2 = offer; offer2.qk = 64;
    CHECK_EQ_INT(ft_offer_pack(&offer2, payload, sizeof payload), FT_WIRE_ERR_BAD_PAYLOAD);
    offer2 = offer; offer2.lr = -1.0f;
    CHECK_EQ_INT(ft_offer_pack(&offer2, payload, sizeof payload), FT_WIRE_ERR_BAD_PAYLOAD);
    offer2 = offer; offer2.update_chunks = 194;
    CHECK_EQ_INT(ft_offer_pack(&offer2, payload, sizeof payload), FT_WIRE_ERR_BAD_PAYLOAD);
    CHECK_EQ_INT(ft_offer_pack(&offer, payload, 51), FT_WIRE_ERR_BUFFER);

    CHECK_EQ_INT(ft_hello_pack(&hello, payload, sizeof payload), FT_WIRE_OK);
    CHECK_EQ_INT(ft_hello_unpack(payload, FT_HELLO_BYTES, &hello2), FT_WIRE_OK);
    CHECK_MEM(&hello, &hello2, sizeof hello);
    CHECK_EQ_INT(ft_result_pack(&res, payload, sizeof payload), FT_WIRE_OK);
    CHECK_EQ_INT(ft_result_unpack(payload, FT_RESULT_BYTES, &res2), FT_WIRE_OK);
    CHECK_MEM(&res, &res2, sizeof res);
    payload[25] = 1; /* reserved byte */
    CHECK_EQ_INT(ft_result_unpack(payload, FT_RESULT_BYTES, &res2), FT_WIRE_ERR_BAD_PAYLOAD);

    CHECK_EQ_INT(ft_ack_init(payload, sizeof payload, FT_MSG_UPDATE_CHUNK, 10, 13, &n), FT_WIRE_OK);
    CHECK_EQ_INT(n, 6 + 2);
    CHECK_EQ_INT(ft_ack_set(payload, n, 10), FT_WIRE_OK);
    CHECK_EQ_INT(ft_ack_set(payload, n, 22), FT_WIRE_OK);
    CHECK_EQ_INT(ft_ack_set(payload, n, 23), FT_WIRE_ERR_BAD_CHUNK);
    CHECK_EQ_INT(ft_ack_set(payload, n, 9), FT_WIRE_ERR_BAD_CHUNK);
    CHECK_EQ_INT(ft_ack_parse(payload, n, &acked, &first, &nbits, &bitmap), FT_WIRE_OK);
    CHECK(acked == FT_MSG_UPDATE_CHUNK && first == 10 && nbits == 13);
    CHECK(bitmap[0] == 0x01 && bitmap[1] == 0x10);
    payload[7] |= 0x80; /* a bit past n_bits */
    CHECK_EQ_INT(ft_ack_parse(payload, n, &acked, &first, &nbits, &bitmap), FT_WIRE_ERR_BAD_PAYLOAD);
    CHECK_EQ_INT(ft_ack_init(payload, sizeof payload, FT_MSG_HELLO, 0, 1, &n), FT_WIRE_ERR_BAD_PAYLOAD);

    CHECK_EQ_INT(ft_error_pack(-12, (const uint8_t *)"replay", 6, payload, sizeof payload, &n), FT_WIRE_OK);
    CHECK_EQ_INT(ft_error_parse(payload, n, &code, &text, &text_len), FT_WIRE_OK);
    CHECK(code == -12 && text_len == 6 && memcmp(text, "replay", 6) == 0);

    /* ---- every type round trips; the payload comes back byte for byte ---- */
    for (t = FT_MSG_HELLO; t <= FT_MSG_RESULT; t++) {
        uint16_t pn, idx = 0, cnt = 1;
        for (i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 31u + (unsigned)t);
        switch (t) {
        case FT_MSG_HELLO: st = ft_hello_pack(&hello, payload, sizeof payload); pn = FT_HELLO_BYTES; break;
        case FT_MSG_OFFER: st = ft_offer_pack(&offer, payload, sizeof payload); pn = FT_OFFER_BYTES; break;
        case FT_MSG_MODEL_CHUNK: st = 0; pn = FT_WIRE_MODEL_CHUNK_BYTES; idx = 691; cnt = 692; break;
        case FT_MSG_UPDATE_CHUNK: st = 0; pn = FT_WIRE_UPDATE_CHUNK_BYTES; idx = 3; cnt = 195; break;
        case FT_MSG_ACK: st = ft_ack_init(payload, sizeof payload, 3, 0, 692, &n); pn = (uint16_t)n; break;
        case FT_MSG_ERROR: st = ft_error_pack(105, (const uint8_t *)"round closed", 12, payload, sizeof payload, &n); pn = (uint16_t)n; break;
        default: st = ft_result_pack(&res, payload, sizeof payload); pn = FT_RESULT_BYTES; break;
        }
        CHECK_EQ_INT(st, FT_WIRE_OK);
        len = make((uint8_t)t, 7, 1, idx, cnt, payload, pn, frame);
        CHECK_EQ_INT(len, 24 + pn + 16);
        ft_replay_init(&g, 7);
        st = ft_wire_decode(frame, len, KEY, sizeof KEY, &g, 0, &h, &p);
        CHECK_EQ_INT(st, FT_WIRE_OK);
        CHECK(h.type == t && h.device_id == 0xA1B2C3D4u && h.round == 7 && h.seq == 1);
        CHECK(h.chunk_index == idx && h.chunk_count == cnt && h.payload_len == pn);
        CHECK_MEM(p, payload, pn);
        CHECK_EQ_INT(ft_wire_peek(frame, len, &h), FT_WIRE_OK);
    }
    /* the header layout is the documented one */
    len = make(FT_MSG_UPDATE_CHUNK, 0x01020304u, 0x05060708u, 2, 3, payload, 132, frame);
    {
        static const uint8_t want[24] = {0x46, 0x54, 1, 4, 0xD4, 0xC3, 0xB2, 0xA1, 4, 3, 2, 1,
                                         8, 7, 6, 5, 2, 0, 3, 0, 132, 0, 0, 0};
        CHECK_MEM(frame, want, 24);
    }

    /* ---- rejections, each with its reason ---- */
    len = make(FT_MSG_UPDATE_CHUNK, 7, 42, 1, 4, payload, 264, frame);
    for (i = 0; i < len; i++) {
        CHECK_EQ_INT(decode(frame, i, NULL, 0), FT_WIRE_ERR_TRUNCATED);
    }
    memcpy(copy, frame, len);
    copy[len] = 0;
    CHECK_EQ_INT(decode(copy, len + 1, NULL, 0), FT_WIRE_ERR_LENGTH);
    /* a flipped bit anywhere is refused; outside the checked header fields it is a bad tag */
    for (i = 0; i < len * 8; i++) {
        memcpy(copy, frame, len);
        copy[i / 8] ^= (uint8_t)(1u << (i % 8));
        st = decode(copy, len, NULL, 0);
        CHECK(st < 0);
        if ((i / 8 >= 4 && i / 8 < 16) || i / 8 >= 24) {
            CHECK_EQ_INT(st, FT_WIRE_ERR_BAD_TAG);
        }
    }
    ft_replay_init(&g, 7);
    st = ft_wire_decode(frame, len, OTHER_KEY, sizeof OTHER_KEY, &g, 0, &h, &p);
    CHECK_EQ_INT(st, FT_WIRE_ERR_BAD_TAG);
    CHECK(g.seen == 0); /* a refused frame leaves the guard untouched */
    st = ft_wire_decode(frame, len, KEY, 15, &g, 0, &h, &p);
    CHECK_EQ_INT(st, FT_WIRE_ERR_ARG);
    memcpy(copy, frame, len); copy[0] = 'X';
    CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_BAD_MAGIC);
    memcpy(copy, frame, len); copy[2] = 2;
    CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_BAD_VERSION);
    memcpy(copy, frame, len); copy[22] = 1;
    CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_BAD_VERSION);
    {
        static const uint8_t bad_types[] = {0, 8, 9, 10, 255};
        for (i = 0; i < sizeof bad_types; i++) {
            memcpy(copy, frame, len); copy[3] = bad_types[i];
            CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_UNKNOWN_TYPE);
        }
    }
    memcpy(copy, frame, len); set_u16(copy + 20, 1161);
    CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_OVERSIZE);
    memcpy(copy, frame, len); set_u16(copy + 16, 4);    /* index == count */
    CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_BAD_CHUNK);
    memcpy(copy, frame, len); set_u16(copy + 18, 0);    /* count 0 */
    CHECK_EQ_INT(decode(copy, len, NULL, 0), FT_WIRE_ERR_BAD_CHUNK);

    /* encode refuses what decode would refuse */
    h.type = FT_MSG_HELLO; h.device_id = 1; h.round = 0; h.seq = 0;
    h.chunk_index = 0; h.chunk_count = 2; h.payload_len = FT_HELLO_BYTES;
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_BAD_CHUNK);
    h.chunk_count = 1; h.payload_len = 11;
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_LENGTH);
    h.type = FT_MSG_UPDATE_CHUNK; h.payload_len = 133;
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_LENGTH);
    h.payload_len = 8 * 132 + 100; /* 1156: under 1160, not whole blocks */
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_LENGTH);
    h.payload_len = 9 * 132; /* 1188 > 1160 */
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_OVERSIZE);
    h.type = FT_MSG_MODEL_CHUNK; h.payload_len = 1156;
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_LENGTH);
    h.payload_len = 1152;
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, 1191, &n), FT_WIRE_ERR_BUFFER);
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, 1192, &n), FT_WIRE_OK);
    h.type = FT_MSG_PARTIAL_SUM;
    CHECK_EQ_INT(ft_wire_encode(&h, payload, KEY, 32, frame, sizeof frame, &n), FT_WIRE_ERR_UNKNOWN_TYPE);

    /* ---- round and replay ---- */
    ft_replay_init(&g, 7);
    len = make(FT_MSG_UPDATE_CHUNK, 6, 1, 0, 1, payload, 132, frame);
    CHECK_EQ_INT(decode(frame, len, &g, 0), FT_WIRE_ERR_WRONG_ROUND);
    CHECK_EQ_INT(decode(frame, len, &g, FT_WIRE_ACCEPT_NEWER_ROUND), FT_WIRE_ERR_WRONG_ROUND);
    len = make(FT_MSG_UPDATE_CHUNK, 8, 1, 0, 1, payload, 132, frame);
    CHECK_EQ_INT(decode(frame, len, &g, 0), FT_WIRE_ERR_WRONG_ROUND);
    {
        /* window: 5, 3, 4 accepted; 3 again refused; 100 moves it; 36 is out, 37 in once */
        static const struct { uint32_t seq; int want; } steps[] = {
            {5, 0}, {3, 0}, {4, 0}, {3, FT_WIRE_ERR_REPLAY}, {5, FT_WIRE_ERR_REPLAY},
            {100, 0}, {36, FT_WIRE_ERR_REPLAY}, {37, 0}, {37, FT_WIRE_ERR_REPLAY},
            {99, 0}, {4, FT_WIRE_ERR_REPLAY}, {0xFFFFFFFFu, 0}, {100, FT_WIRE_ERR_REPLAY},
        };
        ft_replay_init(&g, 7);
        for (i = 0; i < sizeof steps / sizeof steps[0]; i++) {
            len = make(FT_MSG_UPDATE_CHUNK, 7, steps[i].seq, 0, 1, payload, 132, frame);
            CHECK_EQ_INT(decode(frame, len, &g, 0), steps[i].want);
        }
    }
    /* a device accepting the next round's offer */
    ft_replay_init(&g, 7);
    CHECK_EQ_INT(ft_offer_pack(&offer, payload, sizeof payload), FT_WIRE_OK);
    len = make(FT_MSG_OFFER, 9, 1, 0, 1, payload, FT_OFFER_BYTES, frame);
    CHECK_EQ_INT(decode(frame, len, &g, FT_WIRE_ACCEPT_NEWER_ROUND), FT_WIRE_OK);
    CHECK_EQ_INT(g.round, 9);
    CHECK_EQ_INT(decode(frame, len, &g, FT_WIRE_ACCEPT_NEWER_ROUND), FT_WIRE_ERR_REPLAY);

    /* ---- names ---- */
    CHECK(strcmp(ft_wire_status_name(FT_WIRE_ERR_BAD_TAG), "bad_tag") == 0);
    CHECK(strcmp(ft_wire_status_name(FT_WIRE_ERR_SELFTEST), "selftest_failed") == 0);
    CHECK(strcmp(ft_wire_status_name(-19), "unknown_status") == 0);
    CHECK(strcmp(ft_wire_status_name(2), "unknown_status") == 0);
    for (t = 0; t >= FT_WIRE_ERR_SELFTEST; t--) {
        int u;
        for (u = t - 1; u >= FT_WIRE_ERR_SELFTEST; u--) {
            CHECK(strcmp(ft_wire_status_name(t), ft_wire_status_name(u)) != 0);
        }
    }
    return check_report("test_frame");
}
