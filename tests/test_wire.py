"""Frames through fedtiny.net.wire (the C codec): byte layout against an independent struct + hmac
oracle, round trips of every message type, each rejection with its own reason (a version-1 frame,
another run, epoch or session included), replay rules, payload layouts, the session key, and
update chunks that rebuild the same FedAvg aggregate."""
import hashlib
import hmac
import math
import struct

import numpy as np
import pytest

from fedtiny import codec
from fedtiny.net import wire
from fedtiny.fedavg import Accumulator

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
HDR = struct.Struct("<2sBBIIIHHHHII")  # PROTOCOL.md "Frames" header, 32 bytes (version 2)
RUN, EPOCH, SESSION = 0x11223344, 5, 9


def oracle_frame(msg_type, device, rnd, seq, payload, key, chunk=(0, 1), version=2, session=0, epoch=0, run=0):
    """The documented layout built with struct and the standard library's HMAC."""
    head = HDR.pack(b"FT", version, msg_type, device, rnd, seq, chunk[0], chunk[1], len(payload), session,
                    epoch, run)
    return head + payload + hmac.new(key, head + payload, hashlib.sha256).digest()[:16]


def payload_for(t):
    """A valid payload and chunk for each message type."""
    offer = wire.Offer(n_params=199_210, model_hash=bytes(range(16)), lr=0.05, epochs=5,
                       batch_size=32, deadline_ms=30_000, seed=9, codec_flags=3, prox_mu=0.01,
                       arch_hash=bytes(range(100, 116)))
    welcome = wire.Welcome(bytes.fromhex("4433221144332211"), EPOCH, SESSION, bytes(range(16, 24)),
                           bytes(range(32, 40)))
    return {
        wire.MsgType.HELLO: (wire.Hello(n_samples=600, max_frame=1200, capabilities=3, nonce=b"12345678").pack(),
                             (0, 1)),
        wire.MsgType.WELCOME: (welcome.pack(), (0, 1)),
        wire.MsgType.OFFER: (offer.pack(), (0, 1)),
        wire.MsgType.MODEL_CHUNK: (np.arange(288, dtype="<f4").tobytes(), (691, 692)),
        wire.MsgType.UPDATE_CHUNK: (bytes(range(256)) * 4 + bytes(32), (194, 195)),
        wire.MsgType.ACK: (wire.Ack.for_chunks(wire.MsgType.UPDATE_CHUNK, [0, 5, 194], 195).pack(), (0, 1)),
        wire.MsgType.ERROR: (wire.ErrorMsg(105, "round 7 closed").pack(), (0, 1)),
        wire.MsgType.RESULT: (wire.Result(n_samples=600, loss=0.31, accuracy=0.9, steps=94,
                                          update_seed=5, update_flags=1, update_chunks=195).pack(), (0, 1)),
        # secure aggregation (docs/secagg.md "Network messages"): whole entries per chunk
        wire.MsgType.MASKED_UPDATE: (bytes(range(256)) * 4 + bytes(128), (345, 346)),
        wire.MsgType.SECAGG_SETUP: (bytes(56) + bytes(range(40)), (0, 1)),
        wire.MsgType.SECAGG_KEYS: (bytes(range(96)), (0, 1)),
        wire.MsgType.SECAGG_KEY_LIST: (bytes(1100), (1, 4)),
        wire.MsgType.SECAGG_SHARES: (bytes(93 * 12), (0, 2)),
        wire.MsgType.SECAGG_SHARE_LIST: (bytes(93 * 3), (1, 2)),
        wire.MsgType.SECAGG_UNMASK: (bytes(4 * 288), (0, 1)),
        wire.MsgType.SECAGG_UNMASK_SHARES: (bytes(38 * 30), (0, 1)),
    }[t]


DEFINED = [t for t in wire.MsgType if t != wire.MsgType.PARTIAL_SUM]


@pytest.mark.parametrize("t", DEFINED, ids=lambda t: t.name)
def test_every_type_round_trips_and_matches_the_documented_layout(t):
    payload, chunk = payload_for(t)
    frame = wire.encode(t, 0xA1B2C3D4, 7, 12, payload, KEY, chunk=chunk, session=SESSION, epoch=EPOCH, run=RUN)
    assert frame == oracle_frame(t, 0xA1B2C3D4, 7, 12, payload, KEY, chunk, session=SESSION, epoch=EPOCH, run=RUN)
    assert len(frame) <= wire.MAX_FRAME
    f = wire.decode(frame, KEY, wire.ReplayGuard(7, run=RUN, epoch=EPOCH, session=SESSION))
    assert (f.type, f.device_id, f.round, f.seq, f.chunk, f.payload) == (t, 0xA1B2C3D4, 7, 12, chunk, payload)
    assert (f.session, f.epoch, f.run) == (SESSION, EPOCH, RUN)
    assert wire.peek(frame) == f


def test_chunk_sizes_fill_a_datagram_with_whole_blocks():
    assert wire.UPDATE_CHUNK_BYTES == 8 * codec.BLOCK_BYTES == 1056
    assert wire.HEADER_BYTES + wire.UPDATE_CHUNK_BYTES + wire.TAG_BYTES == 1104 <= 1200
    assert wire.HEADER_BYTES + wire.MODEL_CHUNK_BYTES + wire.TAG_BYTES == 1200 == wire.MAX_FRAME
    assert wire.update_chunks(199_210) == math.ceil(math.ceil(199_210 / 128) / 8) == 195
    assert wire.model_chunks(199_210) == math.ceil(4 * 199_210 / 1152) == 692


# ---- payloads ---------------------------------------------------------------------------------

def test_payload_layouts_are_the_documented_bytes():
    assert wire.Hello(600, 1200, 3, 0x0100, b"abcdefgh").pack() == struct.pack("<IHHI8s", 600, 1200, 3, 0x0100,
                                                                               b"abcdefgh")
    offer = wire.Offer(1000, bytes(range(16)), 0.5, 2, 16, 500, seed=3, codec_flags=1, prox_mu=0.25,
                       arch_hash=bytes(range(50, 66)))
    assert offer.pack() == struct.pack("<IHBB16sfHHIIHHff16sBBHI", 1000, 128, 1, 1, bytes(range(16)), 0.5,
                                       2, 16, 500, 3, 4, 1, 0.25, 0.0, bytes(range(50, 66)), 8, 32, 0, 4000)
    # a 1-bit rotated upload (512 values per block, 16 blocks per chunk) and an int8 download:
    # 16 + 132 * 8 = 1,072 bytes of model in one chunk
    offer = wire.Offer(1000, bytes(range(16)), 0.5, 2, 16, 500, seed=3, codec_flags=2, prox_mu=0.25,
                       arch_hash=bytes(range(50, 66)), up_codec=1, down_codec=8)
    assert offer.pack() == struct.pack("<IHBB16sfHHIIHHff16sBBHI", 1000, 512, 1, 2, bytes(range(16)), 0.5,
                                       2, 16, 500, 3, 1, 1, 0.25, 0.0, bytes(range(50, 66)), 1, 8, 0, 1072)
    welcome = wire.Welcome(b"RUNID-01", 7, 3, b"devnonce", b"aggnonce")
    assert welcome.pack() == struct.pack("<8sIHH8s8s", b"RUNID-01", 7, 3, 0, b"devnonce", b"aggnonce")
    assert welcome.run == struct.unpack("<I", b"RUNI")[0] == wire.run_tag(b"RUNID-01")
    assert wire.Result(600, 1, 0.5, 0.75, 94, 7, 1, 195).pack() == struct.pack(
        "<IIffIIBBH", 600, 1, 0.5, 0.75, 94, 7, 1, 0, 195)
    ack = wire.Ack.for_chunks(wire.MsgType.MODEL_CHUNK, [10, 22], 13, first=10)
    assert ack.pack() == struct.pack("<BBHH", 3, 0, 10, 13) + bytes([0x01, 0x10])
    assert wire.ErrorMsg(-12, "replay").pack() == struct.pack("<hH", -12, 6) + b"replay"


@pytest.mark.parametrize("t", [wire.MsgType.HELLO, wire.MsgType.OFFER, wire.MsgType.ACK,
                               wire.MsgType.ERROR, wire.MsgType.RESULT, wire.MsgType.WELCOME], ids=lambda t: t.name)
def test_payload_pack_unpack_round_trip(t):
    payload, _ = payload_for(t)
    cls = {wire.MsgType.HELLO: wire.Hello, wire.MsgType.OFFER: wire.Offer, wire.MsgType.ACK: wire.Ack,
           wire.MsgType.ERROR: wire.ErrorMsg, wire.MsgType.RESULT: wire.Result, wire.MsgType.WELCOME: wire.Welcome}[t]
    assert cls.unpack(payload).pack() == payload


def test_ack_lists_the_missing_chunks():
    ack = wire.Ack.unpack(wire.Ack.for_chunks(wire.MsgType.UPDATE_CHUNK, [0, 2, 3, 6], 8).pack())
    assert ack.received == {0, 2, 3, 6} and ack.missing() == [1, 4, 5, 7]


@pytest.mark.parametrize("bad,reason", [
    (struct.pack("<IHHI8s", 1, 123, 0, 0, bytes(8)), "bad_payload"),   # max_frame below an offer frame (124)
    (struct.pack("<IHHI8s", 1, 1200, 0, 0, bytes(8))[:-1], "length_mismatch"),
    (struct.pack("<IHHI", 1, 1200, 0, 0), "length_mismatch"),           # a version-1 hello
])
def test_bad_hello(bad, reason):
    with pytest.raises(wire.FrameError) as e:
        wire.Hello.unpack(bad)
    assert e.value.reason == reason


@pytest.mark.parametrize("field,value", [("lr", -0.1), ("lr", float("nan")), ("epochs", 0),
                                         ("batch_size", 0), ("prox_mu", -1.0), ("model_chunks", 5),
                                         ("codec_flags", 4), ("n_params", 0), ("update_chunks", 2),
                                         ("up_codec", 3), ("down_codec", 2), ("model_bytes", 4001)])
def test_offer_with_a_field_out_of_range_is_refused(field, value):
    good = dict(n_params=1000, model_hash=bytes(16), lr=0.1, epochs=1, batch_size=8, deadline_ms=100)
    if field in ("up_codec", "down_codec"):   # Python refuses an unknown codec id before C sees it
        with pytest.raises(ValueError, match=field):
            wire.Offer(**{**good, field: value}).pack()
    else:
        with pytest.raises(wire.FrameError) as e:
            wire.Offer(**{**good, field: value}).pack()
        assert e.value.reason == "bad_payload"
    raw = bytearray(wire.Offer(**good).pack())  # the same refusal on the receiving side
    offsets = {"lr": (24, "<f"), "epochs": (28, "<H"), "batch_size": (30, "<H"), "prox_mu": (44, "<f"),
               "model_chunks": (40, "<H"), "codec_flags": (7, "<B"), "n_params": (0, "<I"),
               "update_chunks": (42, "<H"), "up_codec": (68, "<B"), "down_codec": (69, "<B"),
               "model_bytes": (72, "<I")}
    off, fmt = offsets[field]
    struct.pack_into(fmt, raw, off, value)
    with pytest.raises(wire.FrameError, match="bad_payload"):
        wire.Offer.unpack(bytes(raw))


@pytest.mark.parametrize("change", ["qk_of_another_codec", "rot1_stochastic", "reserved", "int8_size_for_int4_down"])
def test_offer_whose_codec_fields_disagree_is_refused(change):
    """The codec fields bind each other: the block size is the upload codec's, the download's byte
    count and chunk count are the download codec's, the rotated 1-bit codec has no stochastic
    rounding, the reserved field is 0. A disagreement is bad_payload on both sides."""
    good = wire.Offer(1000, bytes(16), 0.1, 1, 8, 100, up_codec=4, down_codec=4)
    raw = bytearray(good.pack())
    if change == "qk_of_another_codec":
        struct.pack_into("<H", raw, 4, 512)
    elif change == "rot1_stochastic":
        struct.pack_into("<B", raw, 68, 1)
        struct.pack_into("<HB", raw, 4, 512, 1)
        struct.pack_into("<BH", raw, 7, 1, wire.update_chunks(1000, 1))
    elif change == "reserved":
        struct.pack_into("<H", raw, 70, 1)
    else:
        struct.pack_into("<I", raw, 72, wire.download_bytes(1000, 8))
        struct.pack_into("<H", raw, 40, wire.model_chunks(1000, 8))
    with pytest.raises(wire.FrameError, match="bad_payload"):
        wire.Offer.unpack(bytes(raw))


def test_codec_chunking_is_whole_blocks_of_each_codec():
    """Update chunks hold floor(1152 / block bytes) whole blocks; the download is header + blocks."""
    for up, bv, bb in ((8, 128, 132), (4, 128, 68), (2, 128, 36), (1, 512, 68)):
        assert (wire.block_values(up), wire.block_bytes(up)) == (bv, bb)
        assert wire.chunk_blocks(up) == 1152 // bb
        for n in (1, 127, 128, 129, 199_210, 2**32 - 1):
            blocks = -(-n // bv)
            assert wire.update_chunks(n, up) == -(-blocks // (1152 // bb))
    for n in (1, 128, 199_210):
        assert wire.download_bytes(n, 32) == 4 * n
        assert wire.download_bytes(n, 8) == 16 + 132 * -(-n // 128)
        assert wire.download_bytes(n, 4) == 16 + 68 * -(-n // 128)
        for down in (32, 8, 4):
            assert wire.model_chunks(n, down) == -(-wire.download_bytes(n, down) // 1152)
    with pytest.raises(ValueError, match="32-bit"):   # 4 n does not fit the offer's u32 byte count
        wire.download_bytes(2**30, 32)


def test_ack_with_bits_past_its_length_is_refused():
    raw = bytearray(wire.Ack.for_chunks(4, [0], 3).pack())
    raw[-1] |= 0x80
    with pytest.raises(wire.FrameError, match="bad_payload"):
        wire.Ack.unpack(bytes(raw))


# ---- rejections, one reason each ----------------------------------------------------------------

def reason_of(frame, key=KEY, guard=None, **kw):
    with pytest.raises(wire.FrameError) as e:
        wire.decode(frame, key, guard, **kw)
    assert isinstance(e.value, ValueError) and str(e.value).startswith("frame rejected: ")
    return e.value.reason


@pytest.fixture
def chunk_frame():
    payload, chunk = payload_for(wire.MsgType.UPDATE_CHUNK)
    return wire.encode(wire.MsgType.UPDATE_CHUNK, 42, 7, 100, payload, KEY, chunk=chunk)


def test_every_truncation_is_truncated(chunk_frame):
    for n in range(len(chunk_frame)):
        assert reason_of(chunk_frame[:n]) == "truncated", n


def test_trailing_byte_is_length_mismatch(chunk_frame):
    assert reason_of(chunk_frame + b"\x00") == "length_mismatch"


def test_every_bit_flip_is_refused(chunk_frame):
    reasons = set()
    for i in range(len(chunk_frame) * 8):
        bad = bytearray(chunk_frame)
        bad[i // 8] ^= 1 << (i % 8)
        r = reason_of(bytes(bad))
        if 4 <= i // 8 < 16 or i // 8 >= 22:   # ids, round, seq, session, payload, tag: only the tag sees it
            assert r == "bad_tag", i
        reasons.add(r)
        if 22 <= i // 8 < 32:                  # against a guard, a changed session/epoch/run is named first
            want = "stale_session" if i // 8 < 24 else "stale_epoch" if i // 8 < 28 else "stale_run"
            assert reason_of(bytes(bad), KEY, wire.ReplayGuard(7)) == want, i
    assert reasons == {"bad_magic", "bad_version", "unknown_type", "bad_tag", "bad_chunk",
                       "oversize", "truncated", "length_mismatch"}


def test_wrong_key_is_bad_tag(chunk_frame):
    guard = wire.ReplayGuard(7)
    assert reason_of(chunk_frame, OTHER, guard) == "bad_tag"
    assert guard.highest_seq is None  # a refused frame does not move the window


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_unknown_version(version):
    assert reason_of(oracle_frame(1, 1, 0, 1, wire.Hello(1).pack(), KEY, version=version)) == "bad_version"


def test_a_version_1_frame_is_bad_version():
    """A whole v1 frame as a v1 sender built it (24-byte header, 12-byte HELLO, tag over both)."""
    head = struct.pack("<2sBBIIIHHHH", b"FT", 1, 1, 7, 0, 1, 0, 1, 12, 0)
    payload = struct.pack("<IHHI", 100, 1200, 1, 0)
    v1 = head + payload + hmac.new(KEY, head + payload, hashlib.sha256).digest()[:16]
    assert reason_of(v1) == "bad_version"
    assert reason_of(v1, KEY, wire.ReplayGuard(0)) == "bad_version"


@pytest.mark.parametrize("claims,want", [
    ((RUN ^ 1, EPOCH, SESSION), "stale_run"),               # a fresh --state: another run id
    ((RUN ^ 1, EPOCH - 1, SESSION - 1), "stale_run"),
    ((RUN, EPOCH - 1, SESSION), "stale_epoch"),             # sent before the aggregator restarted
    ((RUN, EPOCH + 1, SESSION), "stale_epoch"),
    ((RUN, EPOCH - 1, SESSION - 1), "stale_epoch"),
    ((RUN, EPOCH, SESSION - 1), "stale_session"),           # the device's previous session (it rebooted)
    ((RUN, EPOCH, 0), "stale_session"),                     # a join HELLO is never read as a session frame
])
def test_another_run_epoch_or_session_has_its_own_reason(claims, want):
    payload, chunk = payload_for(wire.MsgType.UPDATE_CHUNK)
    run, epoch, session = claims
    frame = wire.encode(wire.MsgType.UPDATE_CHUNK, 42, 7, 100, payload, KEY, chunk=chunk, session=session,
                        epoch=epoch, run=run)
    guard = wire.ReplayGuard(7, run=RUN, epoch=EPOCH, session=SESSION)
    assert reason_of(frame, KEY, guard) == want
    assert reason_of(frame, OTHER, guard) == want      # named before any tag is computed
    assert guard.highest_seq is None
    good = wire.encode(wire.MsgType.UPDATE_CHUNK, 42, 7, 100, payload, KEY, chunk=chunk, session=SESSION,
                       epoch=EPOCH, run=RUN)
    assert wire.decode(good, KEY, guard).seq == 100


def test_session_key_is_the_documented_hmac():
    welcome = wire.Welcome(bytes.fromhex("0102030405060708"), 3, 77, b"dddddddd", b"aaaaaaaa")
    want = hmac.new(KEY, b"fedtiny/2 session" + struct.pack("<I", 0xA1B2C3D4) + welcome.pack(),
                    hashlib.sha256).digest()
    assert wire.session_key(KEY, 0xA1B2C3D4, welcome) == want
    other = wire.Welcome(welcome.run_id, 3, 77, b"dddddddd", b"aaaaaaab")   # one aggregator-nonce bit
    assert wire.session_key(KEY, 0xA1B2C3D4, other) != want


@pytest.mark.parametrize("field,value", [("epoch", 0), ("session", 0)])
def test_welcome_out_of_range_is_refused(field, value):
    good = dict(run_id=bytes(8), epoch=1, session=1, device_nonce=bytes(8), agg_nonce=bytes(8))
    with pytest.raises(wire.FrameError, match="bad_payload"):
        wire.Welcome(**{**good, field: value}).pack()
    raw = bytearray(wire.Welcome(**good).pack())
    raw[14] = 1                                              # reserved
    with pytest.raises(wire.FrameError, match="bad_payload"):
        wire.Welcome.unpack(bytes(raw))


@pytest.mark.parametrize("t", [0, 8, 18, 255])
def test_unknown_and_reserved_types(t):
    assert reason_of(oracle_frame(t, 1, 0, 1, b"", KEY)) == "unknown_type"
    with pytest.raises(wire.FrameError, match="unknown_type"):
        wire.encode(t, 1, 0, 1, b"", KEY)


@pytest.mark.parametrize("t,size", [(wire.MsgType.SECAGG_KEYS, 95), (wire.MsgType.SECAGG_KEY_LIST, 150),
                                    (wire.MsgType.SECAGG_SHARES, 92), (wire.MsgType.SECAGG_SHARE_LIST, 94),
                                    (wire.MsgType.SECAGG_UNMASK_SHARES, 39), (wire.MsgType.SECAGG_UNMASK, 6),
                                    (wire.MsgType.SECAGG_SETUP, 58), (wire.MsgType.MASKED_UPDATE, 1151),
                                    (wire.MsgType.MASKED_UPDATE, 0)])
def test_secagg_payloads_of_partial_entries_are_refused(t, size):
    assert reason_of(oracle_frame(t, 1, 0, 1, bytes(size), KEY)) == "length_mismatch"


def test_only_transfers_are_acknowledged():
    assert wire.Ack.unpack(wire.Ack.for_chunks(wire.MsgType.MASKED_UPDATE, [1], 346).pack()).received == {1}
    with pytest.raises(wire.FrameError, match="bad_payload"):
        wire.Ack.for_chunks(wire.MsgType.SECAGG_KEY_LIST, [0], 4).pack()


def test_oversize():
    big = bytes(1153)
    assert reason_of(oracle_frame(3, 1, 0, 1, big, KEY, chunk=(0, 1))) == "oversize"
    with pytest.raises(wire.FrameError, match="oversize"):
        wire.encode(wire.MsgType.MODEL_CHUNK, 1, 0, 1, big, KEY)


@pytest.mark.parametrize("t,size", [(1, 12), (1, 19), (2, 52), (2, 67), (7, 27), (3, 6), (3, 1150), (4, 133),
                                    (4, 0), (5, 5), (10, 31), (10, 0)])
def test_payload_size_the_type_forbids(t, size):
    assert reason_of(oracle_frame(t, 1, 0, 1, bytes(size), KEY)) == "length_mismatch"


@pytest.mark.parametrize("t,chunk", [(4, (3, 3)), (4, (0, 0)), (3, (9, 2)), (1, (0, 2)), (6, (1, 1))])
def test_bad_chunk(t, chunk):
    payload, _ = payload_for(wire.MsgType(t))
    assert reason_of(oracle_frame(t, 1, 0, 1, payload, KEY, chunk=chunk)) == "bad_chunk"


def test_unknown_device_from_key_lookup(chunk_frame):
    assert reason_of(chunk_frame, {}.get) == "unknown_device"
    f = wire.decode(chunk_frame, {42: KEY}.get, {42: wire.ReplayGuard(7)}.get)
    assert f.device_id == 42


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="key must be 16..64 bytes"):
        wire.encode(1, 1, 0, 1, wire.Hello(1).pack(), b"short")
    with pytest.raises(ValueError, match="device_id"):
        wire.encode(1, -1, 0, 1, wire.Hello(1).pack(), KEY)
    with pytest.raises(ValueError, match="seq"):
        wire.encode(1, 1, 0, 2**32, wire.Hello(1).pack(), KEY)
    with pytest.raises(ValueError, match="frame must be bytes-like"):
        wire.decode("text", KEY, None)


# ---- round and replay ------------------------------------------------------------------------------

def frame_seq(seq, rnd=7, t=wire.MsgType.UPDATE_CHUNK):
    payload, chunk = payload_for(t)
    return wire.encode(t, 42, rnd, seq, payload, KEY, chunk=chunk)


def test_replayed_frame_is_refused(chunk_frame):
    guard = wire.ReplayGuard(7)
    wire.decode(chunk_frame, KEY, guard)
    assert reason_of(chunk_frame, KEY, guard) == "replay"


def test_wrong_round_both_ways():
    guard = wire.ReplayGuard(7)
    assert reason_of(frame_seq(1, rnd=6), KEY, guard) == "wrong_round"
    assert reason_of(frame_seq(1, rnd=8), KEY, guard) == "wrong_round"
    assert reason_of(frame_seq(1, rnd=6), KEY, guard, accept_newer_round=True) == "wrong_round"


def test_replay_window_against_a_set_oracle():
    """Window semantics: accept iff seq is new and within 64 of the highest accepted."""
    rng = np.random.default_rng(5)
    guard, seen, highest = wire.ReplayGuard(7), set(), None
    for seq in rng.integers(0, 400, size=600).tolist():
        expect_ok = seq not in seen and (highest is None or seq > highest - 64)
        if expect_ok:
            wire.decode(frame_seq(seq), KEY, guard)
            seen.add(seq)
            highest = seq if highest is None else max(highest, seq)
        else:
            assert reason_of(frame_seq(seq), KEY, guard) == "replay"
        assert guard.highest_seq == highest


def test_next_round_offer_moves_the_device_guard():
    guard = wire.ReplayGuard(7)
    offer = frame_seq(1, rnd=9, t=wire.MsgType.OFFER)
    assert wire.decode(offer, KEY, guard, accept_newer_round=True).round == 9
    assert guard.round == 9
    assert reason_of(offer, KEY, guard, accept_newer_round=True) == "replay"
    guard.start_round(10)
    assert guard.round == 10 and guard.highest_seq is None


# ---- update chunks carry the codec's blocks ----------------------------------------------------------

def test_update_sent_in_chunks_rebuilds_the_same_aggregate():
    """Update chunks, shuffled and with one duplicate dropped by the replay guard, add up to
    exactly the aggregate of the whole update (oracle: Accumulator.add of the Int8Update)."""
    rng = np.random.default_rng(0)
    n = 10_000
    update = codec.encode(rng.standard_normal(n).astype(np.float32))
    n_chunks = wire.update_chunks(n)
    frames = [wire.encode(wire.MsgType.UPDATE_CHUNK, 3, 1, i, wire.update_chunk(update.blocks, i), KEY,
                          chunk=(i, n_chunks)) for i in range(n_chunks)]
    assert all(len(f) <= wire.MAX_FRAME for f in frames)
    order = rng.permutation(n_chunks).tolist() + [4]          # chunk 4 arrives twice
    guard, acc, got = wire.ReplayGuard(1), Accumulator(n), set()
    for i in order:
        try:
            f = wire.decode(frames[i], KEY, guard)
        except wire.FrameError as e:
            assert e.reason == "replay"
            continue
        acc.add_chunk(f.payload, f.chunk_index * wire.UPDATE_CHUNK_BLOCKS, 600)
        got.add(f.chunk_index)
    acc.add_weight(600)
    assert wire.Ack.for_chunks(wire.MsgType.UPDATE_CHUNK, got, n_chunks).missing() == []
    ref = Accumulator(n)
    ref.add(update, 600)
    w, w_ref = np.zeros(n, np.float32), np.zeros(n, np.float32)
    acc.apply(w)
    ref.apply(w_ref)
    np.testing.assert_array_equal(w, w_ref)


def test_model_chunks_rebuild_the_model_and_its_hash():
    w = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    k = wire.model_chunks(w.size)
    rebuilt = np.frombuffer(b"".join(wire.model_chunk(w, i) for i in range(k)), dtype="<f4")
    np.testing.assert_array_equal(rebuilt, w)
    assert wire.model_hash(rebuilt) == hashlib.sha256(w.astype("<f4").tobytes()).digest()[:16]
    with pytest.raises(ValueError, match="out of range"):
        wire.model_chunk(w, k)


@pytest.fixture(params=["portable", "accelerated"])
def sha256_path(request):
    """Each SHA-256 block function the wire library has on this CPU; the choice is restored after."""
    from fedtiny._wire import lib
    before = lib.ft_sha256_accel(-1)
    if request.param == "portable":
        lib.ft_sha256_accel(0)
    elif not lib.ft_sha256_accel(1):
        pytest.skip("this CPU has no SHA extensions (or the build has none): the portable path is the only one")
    yield request.param
    lib.ft_sha256_accel(1 if before else 0)


def test_sha256_and_hmac_match_hashlib_on_every_block_function(sha256_path):
    from fedtiny._wire import ffi, lib
    rng = np.random.default_rng(7)
    lengths = list(range(0, 200)) + [447, 448, 511, 512, 1000, 1199, 1200, 4096, 65537]
    for n in lengths:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        out = ffi.new("uint8_t[32]")
        lib.ft_sha256(data, n, out)
        assert bytes(out) == hashlib.sha256(data).digest(), (sha256_path, n)
        key = rng.integers(0, 256, int(rng.integers(1, 100)), dtype=np.uint8).tobytes()
        lib.ft_hmac_sha256(key, len(key), data, n, out)
        assert bytes(out) == hmac.new(key, data, hashlib.sha256).digest(), (sha256_path, n)
