/* test_cobs.c - COBS line framing: round trips over every length and zero pattern, the line
 * format against a textbook encoder, output I/O failure after every byte, stream decoder
 * recovery after garbage, after a transfer cut after every byte, and on overflow. */
#include "../ft_wire.h"
#include "check.h"

/* Textbook COBS (Cheshire & Baker), buffer to buffer: the oracle for the streaming encoder. */
static size_t ref_cobs(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t r = 0, w = 1, code_at = 0;
    uint8_t code = 1;
    while (r < n) {
        if (in[r] == 0) {
            out[code_at] = code;
            code = 1;
            code_at = w++;
        } else {
            out[w++] = in[r];
            code++;
            if (code == 0xFF) {
                out[code_at] = code;
                code = 1;
                code_at = w++;
                if (r + 1 == n) { /* a full group at the very end needs no extra group */
                    r++;
                    w--;
                    return w;
                }
            }
        }
        r++;
    }
    out[code_at] = code;
    return w;
}

/* A stream whose writes fail once `fail_at` bytes were accepted. */
typedef struct {
    uint8_t buf[4096];
    size_t fail_at;
} failing_sink;

static int failing_write(ft_ostream *s, const uint8_t *data, size_t len)
{
    failing_sink *sink = (failing_sink *)s->state;
    if (s->written + len > sink->fail_at) {
        return 1;
    }
    memcpy(sink->buf + s->written, data, len);
    return 0;
}

static uint32_t rng_state = 12345u;
static uint8_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (uint8_t)rng_state;
}

static void fill(uint8_t *p, size_t n, int pattern)
{
    size_t i;
    for (i = 0; i < n; i++) {
        switch (pattern) {
        case 0: p[i] = 0; break;                              /* all zeros */
        case 1: p[i] = (uint8_t)(1 + i % 255); break;         /* no zeros: 254/255 runs */
        case 2: p[i] = (uint8_t)(i % 3 == 0 ? 0 : i); break;  /* dense zeros */
        default: p[i] = rnd(); break;
        }
    }
}

/* Feed line bytes; collect the frames the decoder reports and count its errors. */
static int feed_all(ft_cobs_decoder *d, const uint8_t *line, size_t n, uint8_t *got,
                    size_t *got_len, int *errors)
{
    size_t i, fl = 0;
    int frames = 0, st;
    for (i = 0; i < n; i++) {
        st = ft_cobs_feed(d, line[i], &fl);
        if (st == FT_WIRE_FRAME_READY) {
            memcpy(got, d->buf, fl);
            *got_len = fl;
            frames++;
        } else if (st < 0) {
            (*errors)++;
        }
    }
    return frames;
}

int main(void)
{
    static uint8_t frame[1300], frame_b[64], line[1400], ref[1400], dbuf[1300], got[1300];
    uint8_t crc_le[4];
    size_t n, len, ref_len, got_len, k, i;
    int pattern, errors, frames, st;
    ft_cobs_decoder dec;
    ft_ostream os;
    failing_sink sink;
    uint32_t c;

    /* 1. Round trip and line format for every length 0..1200 and four zero patterns. */
    for (pattern = 0; pattern < 4; pattern++) {
        for (n = 0; n <= 1200; n += (n < 600 ? 1 : 7)) {
            fill(frame, n, pattern);
            st = ft_cobs_encode_frame(frame, n, line, sizeof line, &len);
            CHECK_EQ_INT(st, FT_WIRE_OK);
            CHECK(len <= FT_COBS_LINE_MAX(n));
            CHECK(line[0] == 0 && line[len - 1] == 0);
            CHECK(memchr(line + 1, 0, len - 2) == NULL);
            c = ft_crc32(0, frame, n);
            memcpy(ref, frame, n);
            crc_le[0] = (uint8_t)c; crc_le[1] = (uint8_t)(c >> 8);
            crc_le[2] = (uint8_t)(c >> 16); crc_le[3] = (uint8_t)(c >> 24);
            memcpy(ref + n, crc_le, 4);
            ref_len = ref_cobs(ref, n + 4, dbuf);
            CHECK_EQ_INT(len, ref_len + 2);
            CHECK_MEM(line + 1, dbuf, ref_len);
            ft_cobs_decoder_init(&dec, dbuf, sizeof dbuf);
            errors = 0;
            got_len = 0;
            frames = feed_all(&dec, line, len, got, &got_len, &errors);
            CHECK_EQ_INT(frames, 1);
            CHECK_EQ_INT(errors, 0);
            CHECK_EQ_INT(got_len, n);
            CHECK_MEM(got, frame, n);
        }
    }

    /* 2. Output stream failing after every byte: the failure is reported, kept, never ignored. */
    fill(frame, 300, 3);
    st = ft_cobs_encode_frame(frame, 300, line, sizeof line, &len);
    CHECK_EQ_INT(st, FT_WIRE_OK);
    for (k = 0; k < len; k++) {
        sink.fail_at = k;
        os.write = failing_write;
        os.state = &sink;
        os.budget = sizeof sink.buf;
        os.written = 0;
        os.error = 0;
        st = ft_cobs_write_frame(&os, frame, 300);
        CHECK_EQ_INT(st, FT_WIRE_ERR_IO);
        CHECK_EQ_INT(os.error, FT_WIRE_ERR_IO);
        CHECK_EQ_INT(os.written, k);
        CHECK_MEM(sink.buf, line, k);
        CHECK_EQ_INT(ft_ostream_write(&os, frame, 1), FT_WIRE_ERR_IO); /* sticky */
    }
    /* Budget: a buffer one byte short is refused, never overrun. */
    st = ft_cobs_encode_frame(frame, 300, line, len - 1, &n);
    CHECK_EQ_INT(st, FT_WIRE_ERR_BUFFER);
    CHECK_EQ_INT(n, 0);

    /* 3. A transfer cut after every byte of frame A, then frame B: B always arrives intact. */
    fill(frame_b, sizeof frame_b, 3);
    {
        uint8_t line_b[128];
        size_t len_b;
        st = ft_cobs_encode_frame(frame_b, sizeof frame_b, line_b, sizeof line_b, &len_b);
        CHECK_EQ_INT(st, FT_WIRE_OK);
        for (k = 0; k <= len; k++) {
            ft_cobs_decoder_init(&dec, dbuf, sizeof dbuf);
            errors = 0;
            got_len = 0;
            frames = feed_all(&dec, line, k, got, &got_len, &errors);
            frames += feed_all(&dec, line_b, len_b, got, &got_len, &errors);
            /* up to len-1 bytes, A lacks only its final delimiter, which B's leading one supplies */
            CHECK_EQ_INT(frames, k >= len - 1 ? 2 : 1);
            CHECK_EQ_INT(got_len, sizeof frame_b);
            CHECK_MEM(got, frame_b, sizeof frame_b);
            /* the cut frame is reported once, unless only delimiters of it were sent */
            CHECK(errors <= 1);
            CHECK_EQ_INT(errors, (k >= 2 && k < len - 1) ? 1 : 0);
        }

        /* 4. Garbage (with and without zeros) between frames: each frame still arrives. */
        for (i = 0; i < 200; i++) {
            uint8_t garbage[97];
            size_t g = (size_t)rnd() % sizeof garbage;
            fill(garbage, g, 3);
            ft_cobs_decoder_init(&dec, dbuf, sizeof dbuf);
            errors = 0;
            frames = feed_all(&dec, garbage, g, got, &got_len, &errors);
            frames += feed_all(&dec, line_b, len_b, got, &got_len, &errors);
            CHECK(frames >= 1);
            CHECK_MEM(got, frame_b, sizeof frame_b);
        }

        /* 5. A flipped bit in the body is a CRC or COBS error, and the next frame still arrives. */
        for (i = 1; i + 1 < len_b; i++) {
            uint8_t bad[128];
            memcpy(bad, line_b, len_b);
            bad[i] ^= 0x10;
            ft_cobs_decoder_init(&dec, dbuf, sizeof dbuf);
            errors = 0;
            got_len = 0;
            frames = feed_all(&dec, bad, len_b, got, &got_len, &errors);
            CHECK(frames == 0 || got_len != sizeof frame_b || memcmp(got, frame_b, got_len) != 0 ||
                  bad[i] == 0);
            frames = feed_all(&dec, line_b, len_b, got, &got_len, &errors);
            CHECK_EQ_INT(frames, 1);
            CHECK_MEM(got, frame_b, sizeof frame_b);
        }

        /* 6. Byte budget: a frame larger than the decoder's buffer is refused once as oversize,
         * then the decoder resynchronises for the next frame. */
        ft_cobs_decoder_init(&dec, dbuf, 100);
        errors = 0;
        st = 0;
        for (i = 0; i < len; i++) {
            int s = ft_cobs_feed(&dec, line[i], &n);
            if (s < 0) {
                CHECK_EQ_INT(s, FT_WIRE_ERR_OVERSIZE);
                errors++;
            }
        }
        CHECK_EQ_INT(errors, 1);
        frames = feed_all(&dec, line_b, len_b, got, &got_len, &errors);
        CHECK_EQ_INT(frames, 1);
        CHECK_MEM(got, frame_b, sizeof frame_b);
    }

    /* 7. Specific reasons: a group cut by a delimiter, a body too short for a CRC, a bad CRC. */
    {
        static const uint8_t cut[] = {0, 5, 1, 2, 0};         /* code 5 promises 4 bytes */
        static const uint8_t short_body[] = {0, 3, 1, 2, 0};  /* 2 bytes: no room for a CRC */
        static const uint8_t bad_crc[] = {0, 6, 1, 2, 3, 4, 5, 0};
        size_t fl;
        ft_cobs_decoder_init(&dec, dbuf, sizeof dbuf);
        for (i = 0; i < sizeof cut; i++) {
            st = ft_cobs_feed(&dec, cut[i], &fl);
        }
        CHECK_EQ_INT(st, FT_WIRE_ERR_COBS);
        for (i = 0; i < sizeof short_body; i++) {
            st = ft_cobs_feed(&dec, short_body[i], &fl);
        }
        CHECK_EQ_INT(st, FT_WIRE_ERR_COBS);
        for (i = 0; i < sizeof bad_crc; i++) {
            st = ft_cobs_feed(&dec, bad_crc[i], &fl);
        }
        CHECK_EQ_INT(st, FT_WIRE_ERR_BAD_CRC);
    }
    return check_report("test_cobs");
}
