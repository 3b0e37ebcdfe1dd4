"""Serial framing through fedtiny.net.wire: the COBS line format against a textbook encoder, a
stream decoder fed in every split, cut after every byte, fed garbage, over its byte budget;
and property-based fuzzing of the frame and stream decoders (hypothesis)."""
import hashlib
import hmac
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtiny.net import wire

KEY = b"serial-line-key-0123456789abcdef"


def ref_cobs(data: bytes) -> bytes:
    """Textbook COBS (Cheshire & Baker 1999): the oracle for the C encoder. A 254-byte run
    that ends the data closes with its 0xFF group (no extra empty group)."""
    out, block = bytearray(), bytearray()
    for i, b in enumerate(data):
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out += b"\xff" + block
                block.clear()
                if i == len(data) - 1:
                    return bytes(out)
    return bytes(out + bytes([len(block) + 1]) + block)


def line_oracle(frame: bytes) -> bytes:
    return b"\x00" + ref_cobs(frame + struct.pack("<I", zlib.crc32(frame))) + b"\x00"


@pytest.mark.parametrize("frame", [b"", b"\x00", b"\x00\x00", b"\x11\x22\x00\x33",
                                   bytes(range(1, 255)), bytes(range(1, 256)), bytes(600),
                                   bytes(range(256)) * 4], ids=lambda f: f"len{len(f)}")
def test_line_format_matches_textbook_cobs(frame):
    line = wire.cobs_frame(frame)
    assert line == line_oracle(frame)
    assert b"\x00" not in line[1:-1]
    assert wire.StreamDecoder(max_frame=2048).feed(line) == [frame]


def frames3():
    payload = wire.Hello(100).pack()
    return [wire.encode(wire.MsgType.HELLO, 1, 0, s, payload, KEY) for s in range(3)]


def test_any_split_of_the_input_gives_the_same_frames():
    frames = frames3()
    stream = b"".join(wire.cobs_frame(f) for f in frames)
    for size in range(1, len(stream) + 1):
        dec = wire.StreamDecoder()
        got = []
        for i in range(0, len(stream), size):
            got += dec.feed(stream[i:i + size])
        assert got == frames, size
        assert not dec.errors


def test_transfer_cut_after_every_byte_then_the_next_frame_arrives():
    a, b = frames3()[:2]
    line_a, line_b = wire.cobs_frame(a), wire.cobs_frame(b)
    for k in range(len(line_a) + 1):
        dec = wire.StreamDecoder()
        got = dec.feed(line_a[:k]) + dec.feed(line_b)
        assert got[-1] == b, k
        assert got[:-1] == ([a] if k >= len(line_a) - 1 else []), k
        assert sum(dec.errors.values()) == (1 if 2 <= k < len(line_a) - 1 else 0), k


def test_reset_drops_a_partial_frame():
    a, b = frames3()[:2]
    dec = wire.StreamDecoder()
    assert dec.feed(wire.cobs_frame(a)[:30]) == []
    dec.reset()
    assert dec.feed(wire.cobs_frame(b)[1:]) == [b]   # even without b's leading delimiter


def test_byte_budget_drops_a_long_frame_once_and_recovers():
    dec = wire.StreamDecoder(max_frame=100)
    long_frame = wire.encode(wire.MsgType.MODEL_CHUNK, 1, 1, 1, bytes(400), KEY)
    short = frames3()[0]
    assert dec.feed(wire.cobs_frame(long_frame) + wire.cobs_frame(short)) == [short]
    assert dec.errors == {"oversize": 1}


def test_corrupted_line_byte_is_counted_and_skipped():
    a, b = frames3()[:2]
    line = bytearray(wire.cobs_frame(a))
    line[10] = line[10] % 255 + 1   # another non-zero value: the frame stays one frame
    dec = wire.StreamDecoder()
    assert dec.feed(bytes(line) + wire.cobs_frame(b)) == [b]
    assert set(dec.errors) <= {"bad_crc", "cobs_error"} and sum(dec.errors.values()) == 1


@settings(max_examples=400, deadline=None)
@given(garbage=st.binary(max_size=300))
def test_garbage_before_a_frame_never_hides_it(garbage):
    frame = frames3()[0]
    dec = wire.StreamDecoder()
    got = dec.feed(garbage) + dec.feed(wire.cobs_frame(frame))
    assert got[-1] == frame
    for f in got[:-1]:   # anything else that came out of the garbage passed its CRC
        assert wire.StreamDecoder().feed(wire.cobs_frame(f)) == [f]


# ---- fuzzing the decoders (hypothesis; the long run is documented in docs/wire.md) ----------

@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=1300))
def test_fuzz_decode_random_bytes_only_raises_frame_error(data):
    try:
        wire.decode(data, KEY, wire.ReplayGuard(0))
    except wire.FrameError as e:
        assert e.reason in wire.REASONS.values()
    else:
        pytest.fail("random bytes passed authentication")


def mutate(frame: bytes, ops) -> bytes:
    b = bytearray(frame)
    for kind, pos, val in ops:
        if not b:
            break
        if kind == 0:
            b[pos % len(b)] = val
        elif kind == 1:
            del b[pos % len(b):]
        elif kind == 2:
            b[pos % len(b):pos % len(b)] = bytes([val])
        else:
            b[2 + pos % 22 if len(b) > 24 else 0] = val % 12   # header fields: small values
    return bytes(b)


def resign(b: bytes) -> bytes:
    if len(b) < 40:
        return b
    body = b[:-16]
    return body + hmac.new(KEY, body, hashlib.sha256).digest()[:16]


op = st.tuples(st.integers(0, 3), st.integers(0, 2000), st.integers(0, 255))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.sampled_from([1, 3, 4, 5, 6]), seq=st.integers(0, 2**32 - 1),
       ops=st.lists(op, min_size=1, max_size=4), signed=st.booleans())
def test_fuzz_decode_mutated_frames(t, seq, ops, signed):
    payload = {1: wire.Hello(5).pack(), 3: bytes(range(200)) * 4, 4: bytes(132 * 3),
               5: wire.Ack.for_chunks(4, [1], 20).pack(), 6: wire.ErrorMsg(1, "x").pack()}[t]
    chunk = (1, 2) if t in (3, 4) else (0, 1)
    frame = wire.encode(t, 9, 3, seq, payload, KEY, chunk=chunk)
    bad = mutate(frame, ops)
    if signed:
        bad = resign(bad)   # authentic but malformed: reaches every check after the tag
    guard = wire.ReplayGuard(3)
    try:
        f = wire.decode(bad, KEY, guard)
    except wire.FrameError as e:
        assert e.reason in wire.REASONS.values()
        assert guard.highest_seq is None
    else:
        # whatever is accepted is exactly what encode produces for its fields
        assert wire.encode(f.type, f.device_id, f.round, f.seq, f.payload, KEY, chunk=f.chunk) == bad
        assert guard.highest_seq == f.seq
        with pytest.raises(wire.FrameError, match="replay"):
            wire.decode(bad, KEY, guard)


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=8), budget=st.integers(1, 1300))
def test_fuzz_stream_decoder_never_raises(chunks, budget):
    dec = wire.StreamDecoder(max_frame=budget)
    out = []
    for c in chunks:
        out += dec.feed(c)
    assert all(len(f) <= budget for f in out)
    assert dec.frames == len(out)
