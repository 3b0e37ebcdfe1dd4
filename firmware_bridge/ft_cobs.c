/*
 * ft_cobs.c - serial framing: CRC-32, an output stream with a byte budget, COBS encoding
 * (Cheshire & Baker 1999) and a byte-at-a-time decoder that resynchronises on 0x00.
 *
 * Line format of one frame:  0x00  COBS(frame || CRC-32(frame) little-endian)  0x00
 */
#include "ft_wire.h"

#include <string.h>

/* Return the first error (nanopb PB_RETURN_ERROR style); the stream keeps it too. */
#define FT_TRY(call)                                                                      \
    do {                                                                                  \
        int ft_try_status_ = (call);                                                      \
        if (ft_try_status_ != FT_WIRE_OK) {                                               \
            return ft_try_status_;                                                        \
        }                                                                                 \
    } while (0)

/* ---- CRC-32, nibble table: 64 bytes of flash instead of 1 KB, about 2x slower than a byte table. */
static const uint32_t CRC_NIBBLE[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t ft_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ CRC_NIBBLE[crc & 15u];
        crc = (crc >> 4) ^ CRC_NIBBLE[crc & 15u];
    }
    return ~crc;
}

/* ---- Output stream ------------------------------------------------------------------------- */
static int buffer_write(ft_ostream *stream, const uint8_t *data, size_t len)
{
    /* ft_ostream_write checked the budget (= capacity) already. */
    memcpy((uint8_t *)stream->state + stream->written, data, len);
    return 0;
}

void ft_ostream_buffer(ft_ostream *stream, uint8_t *buf, size_t cap)
{
    stream->write = buffer_write;
    stream->state = buf;
    stream->budget = cap;
    stream->written = 0;
    stream->error = FT_WIRE_OK;
}

int ft_ostream_write(ft_ostream *stream, const uint8_t *data, size_t len)
{
    if (stream->error != FT_WIRE_OK) {
        return stream->error;
    }
    if (len > stream->budget - stream->written) { /* written <= budget always holds */
        stream->error = FT_WIRE_ERR_BUFFER;
        return stream->error;
    }
    if (stream->write != NULL && stream->write(stream, data, len) != 0) {
        stream->error = FT_WIRE_ERR_IO;
        return stream->error;
    }
    stream->written += len;
    return FT_WIRE_OK;
}

/* ---- COBS encoder -------------------------------------------------------------------------- */
/* The encoded data is frame || crc; read it through one index so no copy is made. */
static uint8_t data_at(const uint8_t *frame, size_t len, const uint8_t crc[4], size_t i)
{
    return i < len ? frame[i] : crc[i - len];
}

int ft_cobs_write_frame(ft_ostream *out, const uint8_t *frame, size_t len)
{
    static const uint8_t delimiter = 0;
    uint8_t crc[FT_WIRE_CRC_BYTES];
    uint32_t c;
    size_t total, pos = 0, run, i;
    uint8_t code, byte;
    if (out == NULL || (frame == NULL && len > 0)) {
        return FT_WIRE_ERR_ARG;
    }
    if (len > (size_t)-1 - FT_WIRE_CRC_BYTES) {
        return FT_WIRE_ERR_OVERSIZE;
    }
    c = ft_crc32(0, frame, len);
    crc[0] = (uint8_t)c;
    crc[1] = (uint8_t)(c >> 8);
    crc[2] = (uint8_t)(c >> 16);
    crc[3] = (uint8_t)(c >> 24);
    total = len + FT_WIRE_CRC_BYTES;

    FT_TRY(ft_ostream_write(out, &delimiter, 1));
    for (;;) {
        run = 0;
        while (pos + run < total && run < 254u && data_at(frame, len, crc, pos + run) != 0) {
            run++;
        }
        code = (uint8_t)(run + 1u);
        FT_TRY(ft_ostream_write(out, &code, 1));
        for (i = 0; i < run; i++) {
            byte = data_at(frame, len, crc, pos + i);
            FT_TRY(ft_ostream_write(out, &byte, 1));
        }
        pos += run;
        if (pos == total) {
            /* Done: the last group's implied zero is the virtual end marker; a 0xFF group has
             * none and needs no extra group. Data ending in 0x00 went round once more and
             * ended with an empty group (code 1), as COBS requires. */
            break;
        }
        if (run < 254u) {
            pos++; /* consume the zero this group stands for */
        }
    }
    FT_TRY(ft_ostream_write(out, &delimiter, 1));
    return FT_WIRE_OK;
}

int ft_cobs_encode_frame(const uint8_t *frame, size_t len, uint8_t *buf, size_t cap,
                         size_t *out_len)
{
    ft_ostream s;
    int st;
    if (buf == NULL || out_len == NULL) {
        return FT_WIRE_ERR_ARG;
    }
    ft_ostream_buffer(&s, buf, cap);
    st = ft_cobs_write_frame(&s, frame, len);
    *out_len = st == FT_WIRE_OK ? s.written : 0;
    return st;
}

/* ---- COBS stream decoder ------------------------------------------------------------------- */
static void decoder_restart(ft_cobs_decoder *dec)
{
    dec->len = 0;
    dec->code = 0;
    dec->zero_due = 0;
    dec->in_frame = 0;
}

void ft_cobs_decoder_init(ft_cobs_decoder *dec, uint8_t *buf, size_t cap)
{
    dec->buf = buf;
    dec->cap = buf != NULL ? cap : 0;
    dec->skipping = 0;
    decoder_restart(dec);
}

static int decoder_fail(ft_cobs_decoder *dec, int status)
{
    decoder_restart(dec);
    dec->skipping = 1;
    return status;
}

int ft_cobs_feed(ft_cobs_decoder *dec, uint8_t byte, size_t *frame_len)
{
    size_t n;
    uint32_t stored;

    if (byte == 0) {
        int was_skipping = dec->skipping, was_in_frame = dec->in_frame;
        uint8_t open_group = dec->code;
        n = dec->len;
        dec->skipping = 0;
        decoder_restart(dec);
        if (was_skipping || !was_in_frame) {
            return 0; /* end of a frame already reported, or an empty frame */
        }
        if (open_group != 0 || n < FT_WIRE_CRC_BYTES) {
            return FT_WIRE_ERR_COBS; /* a group cut short by the delimiter, or no room for a CRC */
        }
        n -= FT_WIRE_CRC_BYTES;
        stored = (uint32_t)dec->buf[n] | ((uint32_t)dec->buf[n + 1] << 8) |
                 ((uint32_t)dec->buf[n + 2] << 16) | ((uint32_t)dec->buf[n + 3] << 24);
        if (ft_crc32(0, dec->buf, n) != stored) {
            return FT_WIRE_ERR_BAD_CRC;
        }
        if (frame_len != NULL) {
            *frame_len = n;
        }
        return FT_WIRE_FRAME_READY;
    }
    if (dec->skipping) {
        return 0;
    }
    dec->in_frame = 1;
    if (dec->code == 0) { /* a code byte: the previous group's zero, if any, is now data */
        if (dec->zero_due) {
            if (dec->len >= dec->cap) {
                return decoder_fail(dec, FT_WIRE_ERR_OVERSIZE);
            }
            dec->buf[dec->len++] = 0;
        }
        dec->zero_due = (uint8_t)(byte != 0xFFu);
        dec->code = (uint8_t)(byte - 1u);
        return 0;
    }
    if (dec->len >= dec->cap) {
        return decoder_fail(dec, FT_WIRE_ERR_OVERSIZE);
    }
    dec->buf[dec->len++] = byte;
    dec->code--;
    return 0;
}
