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
    """A device's n_k is fixed by its first RESULT of a round: a second RESULT claiming another n_k
    is dropped and counted as weight_changed; the same RESULT again is fine."""
    fleet = Fleet(tmp_path, 1)
    with AggregatorThread(fleet.config(rounds=1, min_clients=1, dataset=None)) as at:
        dev = HandDevice(at.address, 0, fleet.keys[0])
        try:
            r, offer, w0 = hand_join(dev)
            n_up = wire.update_chunks(offer.n_params)

            def result(n):
                return dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=n, loss=1.0, steps=10,
                                                                      update_chunks=n_up).pack())
            dev.expect(wire.MsgType.ACK, resend=dev.send(result(100)))
            dev.send(result(5000))
            dev.send(result(100))
            wait_for(lambda: at.agg.rejected["weight_changed"] == 1, 5, "weight_changed counted")
            update = codec.encode(np.full(offer.n_params, 0.01, np.float32), rounding="nearest")
            for i in range(n_up):
                dev.send(dev.frame(wire.MsgType.UPDATE_CHUNK, r, wire.update_chunk(update.blocks, i), chunk=(i, n_up)))
            at.wait(10)
        finally:
            dev.close()
    row = json.loads((tmp_path / "state" / "metrics.json").read_text())[0]
    assert row["rejected"] == {"weight_changed": 1} and row["samples"] == 100, row


def test_result_after_a_complete_upload_cannot_change_n_k(tmp_path):
    """Once a device's update is complete (staged, not yet committed: the round waits for another
    device), a new RESULT claiming another n_k is refused by the aggregator itself (ingest no longer
    holds a slot to compare with)."""
    fleet = Fleet(tmp_path, 2)
    with AggregatorThread(fleet.config(rounds=1, min_clients=2, dataset=None)) as at:
        devs = [HandDevice(at.address, k, fleet.keys[k]) for k in (0, 1)]
        try:
            def hello1():
                return devs[1].frame(wire.MsgType.HELLO, 0, wire.Hello(n_samples=80).pack())
            devs[1].send(hello1())
            joined = [hand_join(d) for d in devs]
            r, offer, w0 = joined[0]
            n_up = wire.update_chunks(offer.n_params)
            update = codec.encode(np.full(offer.n_params, 0.01, np.float32), rounding="nearest")

            def result(dev, n):
                return dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=n, loss=1.0, steps=10,
                                                                      update_chunks=n_up).pack())
            for dev, n in ((devs[0], 100), (devs[1], 80)):
                dev.expect(wire.MsgType.ACK, resend=dev.send(result(dev, n)))
            for i in range(n_up):
                devs[0].send(devs[0].frame(wire.MsgType.UPDATE_CHUNK, r, wire.update_chunk(update.blocks, i),
                                           chunk=(i, n_up)))
            wait_for(lambda: at.agg.current.ingest.is_complete(0), 5, "device 0's upload complete")
            devs[0].send(result(devs[0], 5000))
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
