"""The C per-datagram path (fedtiny/net/rx.py, firmware_bridge/host/ft_rx.c) against the
Python reference path (--ingest python): the same hostile and honest datagrams, over real UDP
on 127.0.0.1, give the same rejection counts, the same contributors and the same aggregate,
bit for bit. And the int8 reader rule, now in C, against a numpy oracle.
"""
import json
import os
import socket
import struct

import numpy as np
import pytest

from fedtiny import codec
from fedtiny.net import rx as rx_mod, session, state, wire
from netutil import AggregatorThread, Fleet, HandDevice


# --- the reader rule ----------------------------------------------------------------------------

def q8_oracle(data: bytes):
    """numpy: the first block with a bad scale or an int8 -128 decides; scale before values."""
    if len(data) == 0 or len(data) % codec.BLOCK_BYTES:
        return "bad_length"
    blocks = np.frombuffer(data, dtype=codec.BLOCK_DTYPE)
    d = blocks["d"].astype(np.float64)
    bad_scale = ~((d >= 0) & (d <= float(codec.MAX_SCALE)))
    bad_value = (blocks["q"] == -128).any(axis=1)
    for s, v in zip(bad_scale, bad_value):
        if s:
            return "bad_scale"
        if v:
            return "bad_value"
    return None


def test_q8_rule_matches_the_oracle(rng):
    m = float(codec.MAX_SCALE)
    hostile = [0.0, -0.0, 1e-45, 1.0, m, float(np.nextafter(np.float32(m), np.float32(np.inf))), -1e-45,
               -1.0, np.inf, -np.inf, np.nan, 3.4e38]
    for trial in range(400):
        n = int(rng.integers(1, 9))
        blocks = np.zeros(n, dtype=codec.BLOCK_DTYPE)
        blocks["d"] = rng.choice(hostile, size=n) if trial % 2 else rng.random(n)
        blocks["q"] = rng.integers(-127, 128, size=(n, codec.QK))
        if trial % 3 == 0:
            blocks["q"][rng.integers(n), rng.integers(codec.QK)] = -128
        data = blocks.tobytes()
        assert codec.check_blocks(data) == q8_oracle(data), blocks["d"]
    for cut in (1, 131, 133):
        assert codec.check_blocks(bytes(cut)) == "bad_length"
    assert codec.check_blocks(b"") == "bad_length"


# --- the C path against the Python path -----------------------------------------------------------

N_DEV = 4


def _offer(dev: HandDevice, n_samples: int):
    f = dev.expect(wire.MsgType.OFFER, resend=lambda: dev.hello(n_samples))
    return f.round, wire.Offer.unpack(f.payload)


def _download(dev: HandDevice, r: int, offer) -> np.ndarray:
    n_chunks = wire.model_chunks(offer.n_params)
    model, got = bytearray(4 * offer.n_params), set()
    ask = lambda: dev.frame(wire.MsgType.ACK, r, wire.Ack.for_chunks(wire.MsgType.MODEL_CHUNK, got, n_chunks).pack())
    dev.send(ask())
    while len(got) < n_chunks:
        f = dev.expect(wire.MsgType.MODEL_CHUNK, resend=ask)
        model[f.chunk_index * 1152:f.chunk_index * 1152 + len(f.payload)] = f.payload
        got.add(f.chunk_index)
    return np.frombuffer(bytes(model), "<f4").astype(np.float32)


def _play(tmp_path, ingest: str) -> dict:
    """Four hand devices, one round that closes at 3 updates: a dying upload, duplicates,
    replays, forgeries and malformed chunks among honest ones. Returns what the aggregator kept."""
    tmp_path.mkdir()
    fleet = Fleet(tmp_path, N_DEV)
    cfg = fleet.config(rounds=1, min_clients=N_DEV, round_timeout=20.0, ingest=ingest, clip_norm=0.0)   # no clipping: the oracle is plain FedAvg
    sent = []
    with AggregatorThread(cfg) as at:
        agg = at.agg
        agg.cfg.min_clients = N_DEV   # all four join; the round closes at 3 complete updates
        devs = [HandDevice(at.address, d, fleet.keys[d]) for d in range(N_DEV)]
        try:
            for dev in devs:   # all four join and say HELLO in their session: the round opens
                dev.join(100 + 10 * dev.id)
                dev.send(dev.hello(100 + 10 * dev.id))
            joined = [_offer(dev, 100 + 10 * dev.id) for dev in devs]
            r, offer = joined[0]
            w0 = _download(devs[0], r, offer)
            agg.current.rnd.min_updates = N_DEV - 1
            n_up = wire.update_chunks(offer.n_params)
            rng = np.random.default_rng(7)
            updates = [codec.encode((rng.standard_normal(offer.n_params) * 0.01 * (d + 1)).astype(np.float32),
                                    rounding="nearest") for d in range(N_DEV)]

            def chunk(dev, i, data=None, **kw):
                payload = wire.update_chunk(updates[dev.id].blocks, i) if data is None else data
                return dev.frame(wire.MsgType.UPDATE_CHUNK, kw.pop("round_id", r), payload,
                                 chunk=kw.pop("chunk", (i, n_up)), **kw)

            def send(dev, frame):
                sent.append(frame)
                return dev.send(frame)

            for dev in devs:   # each device's RESULT (its weight), answered by an ACK: a slot
                res = dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=100 + 10 * dev.id, loss=1.0, steps=10,
                                                                    update_chunks=n_up).pack())
                dev.expect(wire.MsgType.ACK, resend=send(dev, res))
            d3 = devs[3]
            for i in range(n_up - 1):          # device 3 dies before its last chunk
                send(d3, chunk(d3, i))
            for dev in devs[:3]:
                good0 = chunk(dev, 0)
                send(dev, good0)
                send(dev, good0)                                       # replay
                send(dev, chunk(dev, 0))                               # duplicate chunk (new seq)
                send(dev, chunk(dev, 1, key=bytes(32)))                # forged
                send(dev, chunk(dev, 1, round_id=r + 1))               # another round
                send(dev, chunk(dev, 1, device_id=99))                 # no key
                send(dev, chunk(dev, 1, run=dev.welcome.run ^ 1))      # another run
                send(dev, chunk(dev, 1, epoch=dev.welcome.epoch + 1))  # another life of this run
                send(dev, chunk(dev, 1, session=dev.welcome.session + 7))  # a session never offered
                send(dev, chunk(dev, 1, chunk=(1, n_up + 1)))          # wrong chunk count
                send(dev, chunk(dev, 1, data=wire.update_chunk(updates[dev.id].blocks, 1)[:-132]))  # short
                bad = bytearray(wire.update_chunk(updates[dev.id].blocks, 1))
                bad[7] = 0x80
                send(dev, chunk(dev, 1, data=bytes(bad)))              # int8 -128
                bad[0:4] = np.float32(-1.0).tobytes()
                send(dev, chunk(dev, 1, data=bytes(bad)))              # negative scale
                send(dev, os.urandom(60))                              # garbage
                send(dev, b"FT\x01\x04" + bytes(30))                   # truncated
                send(dev, good0 + bytes(1250 - len(good0)))            # oversize
                for i in range(1, n_up):
                    send(dev, chunk(dev, i))
            at.wait(15)
        finally:
            for dev in devs:
                dev.close()
    rows = json.loads((tmp_path / "state" / "metrics.json").read_text())
    ck = state.load(os.path.join(fleet.dir, "state"))
    return {"weights": ck.weights, "rejected": rows[0]["rejected"], "clients": rows[0]["clients"],
            "stragglers": rows[0]["stragglers"], "frames": sent, "w0": w0, "updates": updates}


def test_c_path_matches_the_python_reference(tmp_path):
    ref = _play(tmp_path / "python", "python")
    fast = _play(tmp_path / "c", "c")
    assert [bytes(f) for f in ref["frames"][:50]] != []   # the script ran
    assert fast["clients"] == ref["clients"] == 3 and fast["stragglers"] == ref["stragglers"] == [3]
    assert fast["rejected"] == ref["rejected"], (fast["rejected"], ref["rejected"])
    for reason in ("bad_tag", "replay", "wrong_round", "unknown_device", "bad_chunk", "bad_length", "bad_value",
                   "bad_scale", "oversize", "duplicate_chunk", "stale_run", "stale_epoch", "stale_session"):
        assert ref["rejected"].get(reason, 0) >= 3, (reason, ref["rejected"])
    np.testing.assert_array_equal(fast["weights"].view(np.uint32), ref["weights"].view(np.uint32))
    # and both are FedAvg of the three complete updates (float64 oracle)
    ws = [100.0, 110.0, 120.0]
    mean = sum(w * fast["updates"][d].decode().astype(np.float64) for d, w in enumerate(ws)) / sum(ws)
    np.testing.assert_allclose(fast["weights"], fast["w0"].astype(np.float64) + mean, rtol=0, atol=1e-6)


def test_source_that_fails_checks_is_limited_before_the_tag(tmp_path):
    """A source spending its failures is dropped before any HMAC: counted as source_limited."""
    from fedtiny.net.ingest import Staging
    keys = {1: bytes(range(32))}
    # source_block=0: the tokens alone (the kernel block is tested below)
    rx = rx_mod.Receiver(keys, Staging(1000, 2), ack_every=16, source_burst=10, source_rate=1, source_block=0)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    a.setblocking(False)
    b.connect(a.getsockname())
    try:
        rx.set_life(7, 1)
        welcome = wire.Welcome(bytes([7, 0, 0, 0, 9, 9, 9, 9]), 1, 1, bytes(8), bytes(8))
        sess = session.Session(1, keys[1], welcome)
        rx.set_session(1, sess)
        forged = wire.encode(wire.MsgType.RESULT, 1, 0, 5, wire.Result(n_samples=3).pack(), bytes(32),
                             session=1, epoch=1, run=7)
        for _ in range(30):
            b.send(forged)
        events, _ = rx.poll(a.fileno(), 0.0)
        dropped, nbytes = rx.take_counts()
        assert events == [] and dropped == {"bad_tag": 10, "source_limited": 20} and nbytes == 30 * len(forged)
        good = wire.encode(wire.MsgType.RESULT, 1, 0, 6, wire.Result(n_samples=3).pack(), sess.key,
                           session=1, epoch=1, run=7)
        b.send(good)                       # still limited: even a good frame waits for a token
        events, _ = rx.poll(a.fileno(), 0.5)
        assert events == [] and rx.take_counts()[0] == {"source_limited": 1}
        b.send(good)                       # one token earned back after a second
        events, _ = rx.poll(a.fileno(), 2.0)
        assert len(events) == 1 and events[0].frame.type == wire.MsgType.RESULT and events[0].device_id == 1
        # frames the C path hands to Python (a join HELLO) cost nothing unless Python refuses them
        join = wire.encode(wire.MsgType.HELLO, 1, 0, 0, wire.Hello(n_samples=3, nonce=bytes(8)).pack(), keys[1])
        for _ in range(30):
            b.send(join)
        events, _ = rx.poll(a.fileno(), 100.0)      # tokens back to the burst (10)
        assert len(events) == 30 and all(e.kind == rx_mod.EVENT_RAW and e.raw == join for e in events)
        for _ in range(10):
            rx.penalize(events[0].addr, 100.0)
        b.send(join)
        events, _ = rx.poll(a.fileno(), 100.0)
        assert events == [] and rx.take_counts()[0] == {"source_limited": 1}
    finally:
        a.close()
        b.close()


def _flood(sock, frames, n):
    for i in range(n):
        sock.send(frames[i % len(frames)])


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "ipv4-mapped"])
def test_a_limited_source_is_blocked_in_the_kernel_and_others_still_pass(family):
    """A source out of tokens is blocked by a socket filter for source_block seconds: its
    datagrams are dropped by the kernel (counted as source_blocked, not read), while another
    port of the same address and a known device still get through; the block expires.
    ipv4-mapped: IPv4 senders to a dual-stack IPv6 socket (sources seen as ::ffff:a.b.c.d)."""
    from fedtiny.net.ingest import Staging
    keys = {1: bytes(range(32))}
    rx = rx_mod.Receiver(keys, Staging(1000, 2), ack_every=16, source_burst=10, source_rate=1, source_block=5.0)
    a = socket.socket(socket.AF_INET if family == "ipv4" else socket.AF_INET6, socket.SOCK_DGRAM)
    sender = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    flooder = socket.socket(sender, socket.SOCK_DGRAM)
    honest = socket.socket(sender, socket.SOCK_DGRAM)
    try:
        if family == "ipv4-mapped":
            a.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        a.bind(({"ipv4": "127.0.0.1", "ipv6": "::1", "ipv4-mapped": "::ffff:127.0.0.1"}[family], 0))
    except OSError:
        a.close()
        pytest.skip("no IPv6 loopback")
    a.setblocking(False)
    target = ("127.0.0.1", a.getsockname()[1]) if family == "ipv4-mapped" else a.getsockname()
    try:
        flooder.connect(target)
        honest.connect(target)
        junk = [bytes([i]) * (40 + i) for i in range(8)]
        join = wire.encode(wire.MsgType.HELLO, 1, 0, 0, wire.Hello(n_samples=3, nonce=bytes(8)).pack(), keys[1])
        _flood(flooder, junk, 12)                      # 10 failures, then limited: blocked
        events, _ = rx.poll(a.fileno(), 0.0)
        dropped, _ = rx.take_counts()
        assert events == [] and dropped == {"bad_magic": 10, "source_limited": 2} and rx.blocks == 1
        n_before = rx.datagrams
        _flood(flooder, junk, 500)                     # never read: the kernel drops them
        _flood(flooder, [join], 3)                     # even well-formed frames of that source
        honest.send(join)                              # the same address, another port: passes
        events, _ = rx.poll(a.fileno(), 1.0)
        dropped, _ = rx.take_counts()
        assert rx.datagrams - n_before == 1 and dropped == {"source_blocked": 503}, dropped
        assert len(events) == 1 and events[0].kind == rx_mod.EVENT_RAW and events[0].addr[1] == honest.getsockname()[1]
        # the block expires: the source is read again (and its tokens earned back meanwhile)
        rx.poll(a.fileno(), 6.0)
        flooder.send(join)
        events, _ = rx.poll(a.fileno(), 6.0)
        assert len(events) == 1 and events[0].addr[1] == flooder.getsockname()[1]
        assert rx.take_counts()[0] == {} and rx._rx.block_errno == 0
    finally:
        for s in (a, flooder, honest):
            s.close()


def test_the_block_filter_program_is_classic_bpf_of_the_blocked_sources():
    """ft_rx_filter: 8 instructions per IPv4 source (an IPv4-mapped IPv6 one too), 14 per IPv6
    source, then accept; 0 when nothing is blocked; -1 when the buffer is too small."""
    rx = rx_mod.ffi.new("ft_rx *")
    prog = rx_mod.ffi.new("uint8_t[]", 8 * 500)
    assert rx_mod.lib.ft_rx_filter(rx, prog, 500) == 0
    entries = [(4, socket.inet_pton(socket.AF_INET, "10.0.0.7") + bytes(12), 9000),
               (6, socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.8"), 9001),
               (6, socket.inet_pton(socket.AF_INET6, "2001:db8::1"), 9002)]
    for i, (fam, addr, port) in enumerate(entries):
        b = rx.blocked[i * 3]
        b.family, b.port, b.until = fam, port, 1.0
        rx_mod.ffi.memmove(b.addr, addr, 16)
    n = rx_mod.lib.ft_rx_filter(rx, prog, 500)
    assert n == 8 + 8 + 14 + 1
    assert rx_mod.lib.ft_rx_filter(rx, prog, n - 1) == -1
    insns = [struct.unpack_from("=HBBI", bytes(prog[0:8 * n]), 8 * k) for k in range(n)]
    assert insns[-1] == (0x06, 0, 0, 0xFFFFFFFF)
    ks = [k for _, _, _, k in insns]
    assert 0x0A000007 in ks and 0x0A000008 in ks and 9000 in ks and 9001 in ks and 9002 in ks
    assert 0x20010DB8 in ks and 0x00000001 in ks
    for k, (code, jt, jf, _) in enumerate(insns):    # every jump lands inside the program
        if code & 0x07 == 0x05:
            assert k + 1 + max(jt, jf) < n


def test_datagrams_dropped_for_want_of_room_are_not_counted_as_blocked():
    """With no source blocked, the socket's drops (receive buffer full) are not a rejection:
    counted apart (overflow_drops); the same drops while a source is blocked count as source_blocked."""
    from fedtiny.net.ingest import Staging
    keys = {1: bytes(range(32))}
    rx = rx_mod.Receiver(keys, Staging(1000, 2), ack_every=16, source_burst=10, source_rate=1, source_block=5.0)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)    # room for a few datagrams only
        a.bind(("127.0.0.1", 0))
        a.setblocking(False)
        b.connect(a.getsockname())
        join = wire.encode(wire.MsgType.HELLO, 1, 0, 0, wire.Hello(n_samples=3, nonce=bytes(8)).pack(), keys[1])
        rx.poll(a.fileno(), 0.0)
        _flood(b, [join], 300)                 # authentic-looking joins: no token spent, no block
        events, _ = rx.poll(a.fileno(), 0.0)
        dropped, _ = rx.take_counts()
        assert 0 < len(events) < 300 and rx.overflow_drops == 300 - len(events) and dropped == {}
        assert rx.blocks == 0
    finally:
        a.close()
        b.close()
