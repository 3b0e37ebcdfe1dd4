"""Compressed traffic both ways over real UDP on 127.0.0.1 (docs/PROTOCOL.md "OFFER").

The oracle is `fedtiny simulate` with the same seeds and codecs: the aggregator publishes the same
download message (the whole model as int8 / int4 with error feedback, fedtiny.broadcast), every
client process decodes it with the same C kernel, trains, encodes its delta with the offer's
upload codec (4-bit, 2-bit, rotated 1-bit) and the aggregator commits the staged updates in
device-id order: the final weights must be those of the simulation bit for bit. The bytes the
aggregator counts are the datagrams it really sent and received, checked against the codecs'
sizes; hostile chunks of the wrong codec size or off the codec's grid are dropped and counted.
"""
import asyncio
import json
import os
import time

import numpy as np
import pytest

from fedtiny import codec, model as model_mod
from fedtiny.net import state, transfer, wire
from netutil import AggregatorThread, Fleet, HandDevice, client_logs, simulate_oracle, stop_all

K = 3
ROUNDS = 3
FRAME = wire.HEADER_BYTES + wire.TAG_BYTES   # bytes of a frame around its payload


def _run(tmp_path, up, down, *, clients=K, min_clients=K, fraction=1.0, rounds=ROUNDS, fleet=None, ingest="c"):
    os.makedirs(tmp_path, exist_ok=True)
    fleet = fleet or Fleet(tmp_path, clients)
    procs = []
    at = AggregatorThread(fleet.config(rounds=rounds, codec=up, down_codec=down, min_clients=min_clients,
                                       fraction=fraction, ingest=ingest))
    if min_clients < clients:   # draw round 1 from the whole fleet, as simulate does: wait until all joined
        at.agg._wait_for_devices = _whole_fleet(at.agg, clients)
    try:
        with at as agg:
            procs = fleet.start_clients(f"{agg.address[0]}:{agg.address[1]}")
            agg.wait(90)
        for p in procs:   # told that training finished: they exit by themselves
            assert p.wait(timeout=15) == 0, client_logs(procs)
    finally:
        stop_all(procs)
    return fleet, json.loads((tmp_path / "state" / "metrics.json").read_text())


@pytest.mark.parametrize("up,down", [("int4-ef", "int8"), ("int2-stochastic", "int8"), ("1bit-rot-ef", "int4"),
                                     ("int2-ef", "float32")])
def test_compressed_both_ways_reproduce_simulate_bit_for_bit(tmp_path, up, down):
    weights, rows = simulate_oracle(K, ROUNDS, codec=up, down_codec=down)
    fleet, metrics = _run(tmp_path, up, down)
    ck = state.load(fleet.config().state)
    assert ck.round == ROUNDS
    np.testing.assert_array_equal(ck.weights, weights)        # zero tolerance
    for got, want in zip(ck.metrics, rows):
        assert got["clients"] == want["clients"] == K and got["test_acc"] == want["test_acc"]
    n = ck.weights.size
    up_id, _ = transfer.UPLOAD_CODECS[up]
    down_id = transfer.DOWN_CODECS[down]
    msg = wire.download_bytes(n, down_id)
    assert msg == rows[0]["download_bytes"] // K                # simulate counts the same message
    update_blocks = transfer.update_nbytes(n, up_id) - codec.HEADER_BYTES   # the header travels in OFFER/RESULT
    assert rows[0]["upload_bytes"] // K == update_blocks + codec.HEADER_BYTES
    for row in metrics:
        assert row["rejected"] == {}
        # what really went down: each device's message once (plus resends the pacer counted), in frames
        model_frames = msg + FRAME * wire.model_chunks(n, down_id)
        sent = row["down_by_type"]["MODEL_CHUNK"]
        assert sent >= K * model_frames and sent == row["model_chunks_sent"] * FRAME + K * msg + \
            _resent_payload(row, msg, down_id, n), row
        # and up: at least every device's blocks in whole chunks of its codec
        assert row["bytes_up"] >= K * (update_blocks + FRAME * wire.update_chunks(n, up_id))
        assert row["bytes_up"] < 2 * K * (update_blocks + FRAME * wire.update_chunks(n, up_id)) + 4096


def test_python_receive_path_gives_the_same_bits(tmp_path):
    """--ingest python (the reference the C receive path is checked against) with 2-bit uploads."""
    weights, _ = simulate_oracle(K, 2, codec="int2-ef", down_codec="int8")
    fleet, metrics = _run(tmp_path, "int2-ef", "int8", rounds=2, ingest="python")
    np.testing.assert_array_equal(state.load(fleet.config().state).weights, weights)
    assert all(row["rejected"] == {} for row in metrics)


def _whole_fleet(agg, clients):
    wait = agg._wait_for_devices

    async def whole_fleet(stop):
        while len(agg._alive(time.monotonic())) < clients and not stop.is_set():
            await asyncio.sleep(0.05)
        return await wait(stop)
    return whole_fleet


def _resent_payload(row, msg, down_id, n):
    """Payload bytes of resent model chunks: none on a quiet loopback, else an upper bound check."""
    if row["model_chunks_resent"] == 0:
        return 0
    pytest.skip("model chunks were resent (a loaded machine): the exact byte count is not checked")


def test_download_shrinks_as_the_codec_says(tmp_path):
    """bytes_down of an int8-download round against a float32 one, same model and devices: the
    model-chunk bytes scale as the message sizes (1.03 against 4 bytes per parameter)."""
    _, f32 = _run(tmp_path / "a", "int8-stochastic", "float32", rounds=1)
    _, q8 = _run(tmp_path / "b", "int8-stochastic", "int8", rounds=1)
    a, b = f32[0]["down_by_type"]["MODEL_CHUNK"], q8[0]["down_by_type"]["MODEL_CHUNK"]
    n = state.load(os.path.join(tmp_path / "a", "state")).weights.size
    if f32[0]["model_chunks_resent"] == 0 and q8[0]["model_chunks_resent"] == 0:
        assert a == K * (4 * n + FRAME * wire.model_chunks(n))
        assert b == K * (wire.download_bytes(n, 8) + FRAME * wire.model_chunks(n, 8))
    assert b < 0.3 * a


def test_device_that_missed_rounds_gets_the_whole_model(tmp_path):
    """3 devices, 2 sampled per round: a device left out of a round downloads the next round's
    message whole (every download is the whole model, never a delta against what it holds), and the
    run still equals the simulation bit for bit; at least one device sits out a round and comes back."""
    fraction = 0.67
    weights, rows = simulate_oracle(K, 4, codec="int4-ef", down_codec="int8", fraction=fraction)
    fleet, metrics = _run(tmp_path, "int4-ef", "int8", min_clients=2, fraction=fraction, rounds=4)
    ck = state.load(fleet.config().state)
    np.testing.assert_array_equal(ck.weights, weights)
    assert all(row["selected"] == 2 and row["clients"] == 2 for row in metrics)
    # who took part in each round: the metrics name the stragglers (none here), the oracle the draw
    from fedtiny import rounds as rounds_mod
    took = [set(rounds_mod.sample_clients(K, fraction, seed=0, round_id=r).tolist()) for r in range(1, 5)]
    came_back = [d for d in range(K) for r in range(1, 3) if d not in took[r - 1] and d in took[r]]
    assert came_back, took
    msg = wire.download_bytes(ck.weights.size, 8)
    for row in metrics:   # every selected device got the same whole message: no per-device size
        if row["model_chunks_resent"] == 0:
            assert row["down_by_type"]["MODEL_CHUNK"] == 2 * (msg + FRAME * wire.model_chunks(ck.weights.size, 8))


def test_restart_resumes_the_download_error_feedback(tmp_path):
    """2 rounds, the aggregator stops, a new one resumes from --state for round 3 with new client
    processes: the download's error-feedback residual is in the checkpoint, so round 3's message
    (and the weights) are those of a run that never stopped, bit for bit. (Nearest-rounded int4
    uploads: the devices keep no state of their own that a restart would lose.)"""
    weights, _ = simulate_oracle(K, 3, codec="int4", down_codec="int8")
    fleet, _ = _run(tmp_path, "int4", "int8", rounds=2)
    assert transfer.Download.STATE_KEY in state.load(os.path.join(tmp_path, "state")).optimizer
    fleet, metrics = _run(tmp_path, "int4", "int8", rounds=3, fleet=fleet)
    ck = state.load(fleet.config().state)
    assert ck.round == 3 and len(metrics) == 3
    np.testing.assert_array_equal(ck.weights, weights)


def test_chunks_of_the_wrong_codec_size_or_grid_are_counted_and_dropped(tmp_path):
    """A round with 4-bit uploads: an int8-sized chunk (wrong codec size), a chunk holding a 4-bit
    code 0 (off the grid), a NaN scale and a scale above FLT_MAX/7 are each dropped and counted by
    reason; the honest upload then completes and the aggregate is w0 + decode(update) exactly as
    the float64 oracle says."""
    fleet = Fleet(tmp_path, 1)
    with AggregatorThread(fleet.config(rounds=1, min_clients=1, codec="int4", down_codec="int8")) as at:
        agg = at.agg
        dev = HandDevice(at.address, 0, fleet.keys[0])
        try:
            dev.send(dev.hello())
            offer_frame = dev.expect(wire.MsgType.OFFER, resend=dev.hello)
            r = offer_frame.round
            offer = wire.Offer.unpack(offer_frame.payload)
            assert (offer.up_codec, offer.down_codec) == (4, 8)
            n_model = offer.model_chunks
            dev.send(dev.frame(wire.MsgType.ACK, r, wire.Ack.for_chunks(wire.MsgType.MODEL_CHUNK, [], n_model).pack()))
            message = bytearray(offer.model_bytes)
            got = set()
            while len(got) < n_model:
                f = dev.expect(wire.MsgType.MODEL_CHUNK)
                message[f.chunk_index * 1152:f.chunk_index * 1152 + len(f.payload)] = f.payload
                got.add(f.chunk_index)
            w0 = transfer.decode_download(message, offer.n_params, offer.down_codec)
            assert wire.model_hash(w0) == offer.model_hash

            delta = np.random.default_rng(3).standard_normal(offer.n_params).astype(np.float32) * 0.01
            update = codec.encode_lowbit(delta, "int4")
            n_up = offer.update_chunks
            assert n_up == wire.update_chunks(offer.n_params, 4)
            result = dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=100, loss=1.0, steps=10,
                                                                    update_chunks=n_up).pack())
            dev.expect(wire.MsgType.ACK, resend=dev.send(result))

            def chunk(i, data=None):
                payload = wire.update_chunk(update.blocks, i, 4) if data is None else data
                return dev.frame(wire.MsgType.UPDATE_CHUNK, r, payload, chunk=(i, n_up))

            int8_sized = codec.encode(delta).blocks[:wire.UPDATE_CHUNK_BYTES].tobytes()   # 1,056 bytes, not 1,088
            dev.send(chunk(0, int8_sized))
            bad = bytearray(wire.update_chunk(update.blocks, 0, 4))
            bad[4] = 0x80                                           # low nibble 0: the code of -8, off the grid
            dev.send(chunk(0, bytes(bad)))
            bad = bytearray(wire.update_chunk(update.blocks, 0, 4))
            bad[0:4] = np.float32(np.nan).tobytes()
            dev.send(chunk(0, bytes(bad)))
            bad = bytearray(wire.update_chunk(update.blocks, 0, 4))
            bad[0:4] = np.float32(np.finfo(np.float32).max).tobytes()   # 7 * d overflows
            dev.send(chunk(0, bytes(bad)))
            expected = {"bad_length": 1, "bad_value": 1, "bad_scale": 2}
            from netutil import wait_for
            wait_for(lambda: all(agg.rejected[k] >= v for k, v in expected.items()), 5, f"counters {expected}")
            assert agg.server.accumulator.total_weight == 0 and not agg.server.accumulator._acc.any()
            for i in range(n_up):
                dev.send(chunk(i))
            at.wait(15)
        finally:
            dev.close()
    rows = json.loads((tmp_path / "state" / "metrics.json").read_text())
    assert {k: rows[0]["rejected"].get(k) for k in expected} == expected, rows[0]["rejected"]
    ck = state.load(os.path.join(fleet.dir, "state"))
    # the aggregator steps its float32 model w (not the int8 copy w0 devices start from): w + delta
    w = model_mod.build(fleet.config().model).init(fleet.config().seed)
    step = np.abs(w - w0).max()
    assert 0 < step <= np.abs(w).max() / 127 * 0.5 * 1.0001       # w0: w's int8 copy, half a step away at most
    oracle = w.astype(np.float64) + update.decode().astype(np.float64)   # one update: w + delta
    np.testing.assert_allclose(ck.weights, oracle, rtol=0, atol=1e-6)


def test_bad_codec_names_are_one_line(tmp_path):
    fleet = Fleet(tmp_path, 1)
    for kw, what in ((dict(codec="int3"), "--codec"), (dict(down_codec="int2"), "--down-codec")):
        with pytest.raises(ValueError, match=what):
            fleet.config(**kw).check()


def test_secure_rounds_with_the_int8_download_reproduce_simulate(tmp_path):
    """SecAgg composes with the compressed download (the download is not masked): 5 real client
    processes decode the int8 message, mask their grid vectors and the aggregator's unmasked sum
    gives `fedtiny simulate --secagg --down-codec int8`'s weights bit for bit. A sub-byte --codec
    with --secagg is refused (the masked update is the shared integer grid)."""
    from test_secagg_net import CLIP, run_fleet
    weights, _ = simulate_oracle(5, 2, codec="float32", secagg=True, clip_norm=CLIP, max_samples=None,
                                 down_codec="int8")
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 5, 2, cfg_kw=dict(down_codec="int8"))
    assert codes == [0] * 5, logs
    ck = state.load(cfg.state)
    np.testing.assert_array_equal(ck.weights, weights)
    assert all(row["secagg_outcome"] == "applied" and row["survivors"] == 5 for row in ck.metrics)
    with pytest.raises(ValueError, match="does not apply with --secagg"):
        fleet.config(secagg=True, clip_norm=CLIP, codec="int4-ef").check()
