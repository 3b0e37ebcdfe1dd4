"""Windows and bounds exactly at their edges, each checked on both sides, on the plain build (a
mutant that moves an edge by one fails here, not only under a sanitizer). Oracles: the documented
rule of each bound (docs/PROTOCOL.md, docs/network.md), written out as numbers."""
import json

import numpy as np
import pytest

from fedtiny import codec
from fedtiny.net import wire
from netutil import AggregatorThread, Fleet, HandDevice, hand_join, wait_for

KEY = bytes(range(32))


def frame(seq, rnd=7):
    payload = bytes(codec.BLOCK_BYTES)          # one all-zero int8 block: a valid chunk
    return wire.encode(wire.MsgType.UPDATE_CHUNK, 42, rnd, seq, payload, KEY, chunk=(0, 1))


def accepted(guard, seq) -> bool:
    try:
        wire.decode(frame(seq), KEY, guard)
        return True
    except wire.FrameError as exc:
        assert exc.reason == "replay", exc
        return False


def test_replay_window_edges_63_and_64_behind():
    guard = wire.ReplayGuard(7)
    assert accepted(guard, 100)
    assert not accepted(guard, 36)        # 64 behind: outside the window
    assert accepted(guard, 37)            # 63 behind: inside, new
    assert not accepted(guard, 37)        # ... once


def test_replay_window_slides_by_exactly_64():
    """A jump of exactly 64 forgets the whole old window (its bits must not survive the shift)."""
    guard = wire.ReplayGuard(7)
    assert accepted(guard, 99) and accepted(guard, 100)
    assert accepted(guard, 164)           # shift 64: old window gone
    assert accepted(guard, 163)           # 1 behind, never seen (bit 1 once meant 99)
    assert accepted(guard, 101)           # 63 behind, never seen
    assert not accepted(guard, 100)       # 64 behind
    guard = wire.ReplayGuard(7)
    assert accepted(guard, 99) and accepted(guard, 100)
    assert accepted(guard, 163)           # shift 63: 100 is now 63 behind and remembered
    assert not accepted(guard, 100) and accepted(guard, 101)


def test_scale_bound_is_exactly_flt_max_over_127():
    top = np.float32(codec.MAX_SCALE)
    block = bytearray(codec.BLOCK_BYTES)
    for d, ok in [(top, True), (np.nextafter(top, np.float32(np.inf)), False), (np.float32(0), True),
                  (np.float32(-0.0), True), (np.nextafter(np.float32(0), np.float32(-1)), False)]:
        block[0:4] = np.float32(d).tobytes()
        assert (codec.check_blocks(bytes(block)) is None) is ok, d
    with np.errstate(over="ignore"):
        assert np.isfinite(np.float32(127) * top)                                   # decodes finite
        assert np.isinf(np.float32(127) * np.nextafter(top, np.float32(np.inf)))    # the next one would not


def test_int8_value_bound_at_every_position():
    for pos in (0, 127):
        block = bytearray(codec.BLOCK_BYTES)
        block[0:4] = np.float32(0.5).tobytes()
        block[4 + pos] = 0x81                    # -127: the codec's most negative value
        assert codec.check_blocks(bytes(block)) is None
        block[4 + pos] = 0x80                    # -128: outside
        assert codec.check_blocks(bytes(block)) == "bad_value", pos


def test_result_with_another_n_k_mid_round_is_refused(tmp_path):
    """A device's RESULT must carry the n_k its HELLO announced (samples_mismatch), and its (n_k,
    steps) are fixed by its first RESULT of a round: a second RESULT with other steps is dropped and
    counted as weight_changed; the same RESULT again is fine."""
    fleet = Fleet(tmp_path, 1)
    with AggregatorThread(fleet.config(rounds=1, min_clients=1, dataset=None)) as at:
        dev = HandDevice(at.address, 0, fleet.keys[0])
        try:
            r, offer, w0 = hand_join(dev)
            n_up = wire.update_chunks(offer.n_params)

            def result(n, steps=10):
                return dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=n, loss=1.0, steps=steps,
                                                                      update_chunks=n_up).pack())
            dev.expect(wire.MsgType.ACK, resend=dev.send(result(100)))
            dev.send(result(5000))
            dev.send(result(100, steps=11))
            dev.send(result(100))
            wait_for(lambda: at.agg.rejected["weight_changed"] == 1 and at.agg.rejected["samples_mismatch"] == 1,
                     5, "weight_changed and samples_mismatch counted")
            update = codec.encode(np.full(offer.n_params, 0.01, np.float32), rounding="nearest")
            for i in range(n_up):
                dev.send(dev.frame(wire.MsgType.UPDATE_CHUNK, r, wire.update_chunk(update.blocks, i), chunk=(i, n_up)))
            at.wait(10)
        finally:
            dev.close()
    row = json.loads((tmp_path / "state" / "metrics.json").read_text())[0]
    assert row["rejected"] == {"samples_mismatch": 1, "weight_changed": 1} and row["samples"] == 100, row


def test_result_after_a_complete_upload_cannot_change_n_k(tmp_path):
    """Once a device's update is complete (staged, not yet committed: the round waits for another
    device), a new RESULT with other (n_k, steps) is refused by the aggregator itself (ingest no
    longer holds a slot to compare with)."""
    fleet = Fleet(tmp_path, 2)
    with AggregatorThread(fleet.config(rounds=1, min_clients=2, dataset=None)) as at:
        devs = [HandDevice(at.address, k, fleet.keys[k]) for k in (0, 1)]
        try:
            hello1 = devs[1].hello
            devs[1].send(hello1(80))
            joined = [hand_join(d) for d in devs]
            r, offer, w0 = joined[0]
            n_up = wire.update_chunks(offer.n_params)
            update = codec.encode(np.full(offer.n_params, 0.01, np.float32), rounding="nearest")

            def result(dev, n, steps=10):
                return dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=n, loss=1.0, steps=steps,
                                                                      update_chunks=n_up).pack())
            for dev, n in ((devs[0], 100), (devs[1], 80)):
                dev.expect(wire.MsgType.ACK, resend=dev.send(result(dev, n)))
            for i in range(n_up):
                devs[0].send(devs[0].frame(wire.MsgType.UPDATE_CHUNK, r, wire.update_chunk(update.blocks, i),
                                           chunk=(i, n_up)))
            wait_for(lambda: at.agg.current.ingest.is_complete(0), 5, "device 0's upload complete")
            devs[0].send(result(devs[0], 100, steps=99))
            wait_for(lambda: at.agg.rejected["weight_changed"] == 1, 5, "weight_changed counted")
            for i in range(n_up):
                devs[1].send(devs[1].frame(wire.MsgType.UPDATE_CHUNK, r, wire.update_chunk(update.blocks, i),
                                           chunk=(i, n_up)))
            at.wait(10)
        finally:
            for d in devs:
                d.close()
    row = json.loads((tmp_path / "state" / "metrics.json").read_text())[0]
    assert row["rejected"] == {"weight_changed": 1} and row["samples"] == 180, row


# ---- timeouts, each at its edge with an explicit clock --------------------------------------------

def test_aggregator_samples_devices_heard_within_exactly_alive_seconds(tmp_path):
    import os
    from fedtiny.net import aggregator as agg_mod
    fleet = Fleet(tmp_path, 2)
    agg = agg_mod.Aggregator(fleet.config(dataset=None), out=open(os.devnull, "w"))
    try:
        for d, seen in ((0, 100.0), (1, 101.0)):   # as a join and a HELLO register them
            agg.devices[d] = agg_mod._Device(d, fleet.keys[d], session=_session(d, fleet.keys[d]),
                                             addr=("127.0.0.1", 9), last_seen=seen)
        edge = 100.0 + agg_mod.ALIVE_SECONDS
        assert agg._alive(edge) == [0, 1]                          # silent exactly ALIVE_SECONDS: alive
        assert agg._alive(np.nextafter(edge, np.inf)) == [1]       # a moment more: not sampled
    finally:
        agg.out.close()


def _session(device_id, psk):
    """A session as a WELCOME would open it (run, epoch, number, nonces made up)."""
    from fedtiny.net import session
    return session.Session(device_id, psk, wire.Welcome(bytes(range(8)), 1, 7, bytes(8), bytes(range(8, 16))))


class _Peer:
    """The aggregator's end of a real UDP socket pair: what a Device sends, decoded (join frames
    with the pre-shared key, the others with the session's key)."""

    def __init__(self, key, session_key=None):
        import socket
        self.key, self.session_key = key, session_key
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.settimeout(0.2)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.connect(self.rx.getsockname())

    def types(self):
        import socket
        out = []
        try:
            while True:
                data = self.rx.recv(2048)
                key = self.key if wire.peek(data).session == 0 else self.session_key
                out.append(wire.decode(data, key, None).type)
        except socket.timeout:
            return out

    def close(self):
        self.rx.close()
        self.tx.close()


def _device(key):
    from fedtiny import model as fm
    from fedtiny.net.client import Device
    m = fm.build("mlp:64-32-10")
    return Device(0, key, m, np.zeros((10, 8, 8, 1), np.float32), np.zeros(10, np.int64))


@pytest.mark.parametrize("late", [False, True])
def test_device_rejoins_only_after_more_than_silent_seconds(late):
    from fedtiny.net import client
    dev = _device(KEY)
    dev.session = _session(0, KEY)
    peer = _Peer(KEY, dev.session.key)
    try:
        dev.sock = peer.tx
        dev.state, dev.round, dev.result = "uploading", 1, wire.Result(n_samples=10, loss=1.0, steps=1,
                                                                       update_chunks=1).pack()
        dev.last_heard = dev.last_progress = dev.last_sent = 0.0
        now = client.SILENT_SECONDS
        dev.tick(np.nextafter(now, np.inf) if late else now)
        assert dev.state == ("joining" if late else "uploading")
        assert peer.types() == ([wire.MsgType.HELLO] if late else [wire.MsgType.RESULT])
    finally:
        peer.close()


@pytest.mark.parametrize("late", [False, True])
def test_device_resends_its_result_only_after_more_than_upload_ack_wait(late):
    from fedtiny.net import client
    dev = _device(KEY)
    dev.session = _session(0, KEY)
    peer = _Peer(KEY, dev.session.key)
    try:
        dev.sock = peer.tx
        dev.state, dev.round, dev.result = "uploading", 1, wire.Result(n_samples=10, loss=1.0, steps=1,
                                                                       update_chunks=1).pack()
        dev.last_heard = dev.last_progress = dev.last_sent = 0.0
        now = client.UPLOAD_ACK_WAIT
        dev.tick(np.nextafter(now, np.inf) if late else now)
        assert peer.types() == ([wire.MsgType.RESULT] if late else [])
    finally:
        peer.close()


def test_clipped_weight_is_the_float32_just_below_the_exact_product():
    """bounds.scaled_weight: n_k * factor as a float32 rounded toward zero, never up (an update scaled
    by a weight rounded up would enter the sum with a norm above the clip bound)."""
    from fedtiny import bounds
    rng = np.random.default_rng(0)
    rounded_up = 0
    for _ in range(2000):
        w, f = float(rng.integers(1, 10_000)), float(rng.uniform(0.001, 1.0))
        exact = w * f
        got = bounds.scaled_weight(w, f)
        assert float(np.float32(got)) == got and got <= exact, (w, f)
        assert float(np.nextafter(np.float32(got), np.float32(np.inf))) > exact, (w, f)   # the closest one below
        rounded_up += float(np.float32(exact)) > exact
    assert rounded_up > 100   # round-to-nearest would have gone up in these cases
