"""The real federation over UDP on 127.0.0.1: client processes, a lossy relay, kill -9, bad frames.

Two oracles. The independent one (netutil.WireCapture): the updates and n_k the client processes
really sent and the models the aggregator really sent down, captured on the wire; FedAvg of them in
float64 numpy must give the next model (a wrong weight, a lost or doubled chunk, a wrong scale
shows up there, whatever the aggregator's own code believes). The determinism one: `fedtiny
simulate` with the same seeds. The aggregator commits the
round's updates in device-id order (fedtiny.net.ingest) and each device derives its training and
rounding seeds as simulate derives them for client k = device id, so the global weights must be
bit-for-bit those of the simulation: the tolerance is zero.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fedtiny import bounds, codec
from fedtiny.net import state, wire
from netutil import (MODEL, AggregatorThread, Fleet, HandDevice, SessionKeys, WireCapture, check_against_wire,
                     client_logs, free_udp_port, simulate_oracle, stop_all, wait_for)
from udp_relay import LossyRelay

K = 3
ROUNDS = 3


@pytest.fixture(scope="module")
def oracle():
    return simulate_oracle(K, ROUNDS)


def check_against_simulation(state_dir, oracle, rounds=ROUNDS):
    weights, rows = oracle
    ck = state.load(state_dir)
    assert ck.round == rounds
    np.testing.assert_array_equal(ck.weights, weights)   # bit-exact: same seeds, same summation order
    for got, want in zip(ck.metrics, rows):
        assert got["round"] == want["round"] and got["clients"] == want["clients"] == K
        assert got["samples"] == want["samples"]
        assert got["test_loss"] == want["test_loss"] and got["test_acc"] == want["test_acc"]


def test_client_processes_reproduce_simulate(tmp_path, oracle):
    fleet = Fleet(tmp_path, K)
    capture = WireCapture(fleet.keys)
    procs = []
    try:   # a relay that loses nothing: only a tap on the wire
        with AggregatorThread(fleet.config(rounds=ROUNDS)) as agg, \
                LossyRelay(agg.address, drop=0, duplicate=0, reorder=0, tap=capture) as relay:
            procs = fleet.start_clients(f"{relay.addr[0]}:{relay.addr[1]}")
            agg.wait(40)
        for p in procs:   # the aggregator tells them it finished: they exit by themselves
            assert p.wait(timeout=10) == 0, client_logs(procs)
    finally:
        stop_all(procs)
    metrics = json.loads((tmp_path / "state" / "metrics.json").read_text())
    check_against_wire(capture, state.load(fleet.config().state).weights, metrics, fleet.config().clip_norm)
    check_against_simulation(fleet.config().state, oracle)
    assert all(row["rejected"] == {} for row in metrics)
    assert all(row["bytes_up"] > 0 and row["bytes_down"] > 0 for row in metrics)


def test_lossy_relay_same_aggregate(tmp_path, oracle):
    """10% drop, 5% duplicate, 10% reordered, both directions, and 30% of the update chunks sent
    again re-signed under a new sequence number (so they pass the replay guard and reach ingest's
    duplicate-chunk check): FedAvg of what was sent, and the same bits as the lossless run."""
    fleet = Fleet(tmp_path, K)
    capture = WireCapture(fleet.keys)
    procs = []
    try:
        with AggregatorThread(fleet.config(rounds=ROUNDS)) as agg, \
                LossyRelay(agg.address, drop=0.10, duplicate=0.05, reorder=0.10, seed=7, tap=capture,
                           keys=SessionKeys(fleet.keys), chunk_duplicate=0.3) as relay:
            procs = fleet.start_clients(f"{relay.addr[0]}:{relay.addr[1]}")
            agg.wait(60)
            counts = dict(relay.counts)
    finally:
        stop_all(procs)
    assert counts["dropped"] > 0 and counts["duplicated"] > 0 and counts["reordered"] > 0, counts
    assert counts["resigned_duplicates"] > 0, counts
    metrics = json.loads((tmp_path / "state" / "metrics.json").read_text())
    check_against_wire(capture, state.load(fleet.config().state).weights, metrics, fleet.config().clip_norm)
    check_against_simulation(fleet.config().state, oracle)
    rejected = {}
    for row in metrics:
        for k, v in row["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    # what duplication and reordering legitimately cause; a bad_tag or bad_scale here would be a bug
    # (hello_rate: a duplicated join HELLO arriving within WELCOME_SECONDS of the first)
    assert set(rejected) <= {"replay", "duplicate_chunk", "round_closed", "wrong_round", "hello_rate"}, rejected
    assert rejected.get("duplicate_chunk", 0) > 0, rejected      # the re-signed copies reached ingest


# Subprocesses run in the test's directory: from the checkout's root, `python -m fedtiny.cli`
# would import the source tree instead of the installed (compiled) package.
def _aggregate_cmd(fleet, port, rounds):
    return [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}", "--model", MODEL,
            "--rounds", str(rounds), "--min-clients", str(K), "--round-timeout", "20", "--keys", fleet.keyfile,
            "--state", os.path.join(fleet.dir, "state"), "--dataset", "digits", "--lr", "0.05", "--batch", "10",
            "--epochs", "1", "--codec", "int8-stochastic", "--seed", "0"]


def test_kill_9_mid_round_and_resume(tmp_path, oracle):
    fleet = Fleet(tmp_path, K)
    port = free_udp_port()
    state_dir = os.path.join(fleet.dir, "state")
    procs = []
    agg = subprocess.Popen(_aggregate_cmd(fleet, port, ROUNDS), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, cwd=fleet.dir)
    try:
        procs = fleet.start_clients(f"127.0.0.1:{port}")
        for line in agg.stderr:   # kill -9 the moment round 2 is offered: mid-round by construction
            if "round 2:" in line:
                agg.send_signal(signal.SIGKILL)
                break
        agg.wait(timeout=10)
        agg.stderr.close()
        assert agg.returncode == -signal.SIGKILL
        assert state.load(state_dir).round == 1          # round 1 is on disk, round 2 was in flight
        agg = subprocess.Popen(_aggregate_cmd(fleet, port, ROUNDS), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=fleet.dir)
        out, err = agg.communicate(timeout=40)
        assert agg.returncode == 0, err
        assert "3 of 3 rounds finished" in out
    finally:
        if agg.poll() is None:
            agg.kill()
            agg.wait()
        stop_all(procs)
    check_against_simulation(state_dir, oracle)


def test_bad_frames_are_counted_and_never_reach_the_sum(tmp_path):
    fleet = Fleet(tmp_path, 1)
    dev_id, other = 0, 1
    with AggregatorThread(fleet.config(rounds=1, min_clients=1)) as at:
        agg = at.agg
        dev = HandDevice(at.address, dev_id, fleet.keys[dev_id])
        try:
            first_hello = dev.send(dev.hello())
            offer_frame = dev.expect(wire.MsgType.OFFER, resend=dev.hello)
            r = offer_frame.round
            offer = wire.Offer.unpack(offer_frame.payload)
            n_chunks = wire.model_chunks(offer.n_params)
            ask = dev.frame(wire.MsgType.ACK, r, wire.Ack.for_chunks(wire.MsgType.MODEL_CHUNK, [], n_chunks).pack())
            dev.send(ask)
            model = bytearray(4 * offer.n_params)
            got = set()
            while len(got) < n_chunks:
                f = dev.expect(wire.MsgType.MODEL_CHUNK)
                model[f.chunk_index * 1152:f.chunk_index * 1152 + len(f.payload)] = f.payload
                got.add(f.chunk_index)
            w0 = np.frombuffer(bytes(model), "<f4").astype(np.float32)
            assert wire.model_hash(w0) == offer.model_hash

            delta = np.random.default_rng(3).standard_normal(offer.n_params).astype(np.float32) * 0.01
            update = codec.encode(delta, rounding="nearest")
            n_up = wire.update_chunks(offer.n_params)
            result = dev.frame(wire.MsgType.RESULT, r, wire.Result(n_samples=100, loss=1.0, steps=10,
                                                                    update_chunks=n_up).pack())
            dev.expect(wire.MsgType.ACK, resend=dev.send(result))

            def chunk(i, data=None, **kw):
                return dev.frame(wire.MsgType.UPDATE_CHUNK, kw.pop("round_id", r),
                                 wire.update_chunk(update.blocks, i) if data is None else data, chunk=(i, n_up), **kw)

            good0 = chunk(0)
            dev.send(chunk(0, key=bytes(32)))                       # wrong key
            dev.send(good0)
            dev.send(good0)                                         # the same frame again: replay
            dev.send(chunk(1, round_id=r + 1))                      # a round that is not open
            dev.send(chunk(1, device_id=9))                         # an id without a key
            dev.send(first_hello)                                   # a replayed HELLO (would move its address)
            dev.send(os.urandom(80))                                # garbage
            dev.send(b"FT" + bytes(10))                             # truncated header
            dev.send(good0 + bytes(1300 - len(good0)))              # oversized datagram
            bad = bytearray(wire.update_chunk(update.blocks, 1))
            bad[4] = 0x80                                           # int8 value -128: outside the codec
            dev.send(chunk(1, bytes(bad)))
            bad = bytearray(wire.update_chunk(update.blocks, 1))
            bad[0:4] = np.float32(np.nan).tobytes()                 # NaN scale
            dev.send(chunk(1, bytes(bad)))
            expected = {"bad_tag": 1, "replay": 2, "wrong_round": 1, "unknown_device": 1, "oversize": 1,
                        "bad_value": 1, "bad_scale": 1}
            wait_for(lambda: all(agg.rejected[k] >= v for k, v in expected.items())
                     and sum(agg.rejected[k] for k in ("bad_magic", "truncated", "bad_version")) >= 2,
                     5, f"rejection counters {expected}")
            assert agg.server.accumulator.total_weight == 0 and not agg.server.accumulator._acc.any()
            assert agg.server.round_id == 1 and agg.current is not None      # still serving round 1

            for i in range(1, n_up):                                # now the honest rest of the upload
                dev.send(chunk(i))
            at.wait(10)
        finally:
            dev.close()
    rows = json.loads((tmp_path / "state" / "metrics.json").read_text())
    for k, v in expected.items():
        assert rows[0]["rejected"][k] == v, rows[0]["rejected"]
    ck = state.load(os.path.join(fleet.dir, "state"))
    oracle = w0.astype(np.float64) + update.decode().astype(np.float64)   # FedAvg of one update: w0 + delta
    np.testing.assert_allclose(ck.weights, oracle, rtol=0, atol=1e-6)
    assert other not in agg.devices or agg.devices[other].addr is None


def test_sigterm_stops_cleanly_and_bad_keys_are_one_line(tmp_path):
    fleet = Fleet(tmp_path, 2)
    port = free_udp_port()
    agg = subprocess.Popen(_aggregate_cmd(fleet, port, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=fleet.dir)
    try:
        for line in agg.stderr:              # listening, waiting for devices
            if "waiting for devices" in line:
                break
        agg.send_signal(signal.SIGTERM)
        out, err = agg.communicate(timeout=10)
    finally:
        if agg.poll() is None:
            agg.kill()
            agg.wait()
    assert agg.returncode == 0 and "Traceback" not in err
    assert "0 of 2 rounds finished" in out and "resume at round 1" in out
    (tmp_path / "bad.keys").write_text("0 00112233\n")
    cmd = _aggregate_cmd(fleet, port, 2)
    cmd[cmd.index("--keys") + 1] = str(tmp_path / "bad.keys")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=fleet.dir)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"fedtiny aggregate: error: {tmp_path / 'bad.keys'} line 1: key of 4 bytes, "
                                               "expected 16 to 64"]


def test_dead_upload_straggler_and_late_update_leave_the_average_alone(tmp_path):
    """Device 0 completes; device 1 dies after half its chunks. The round closes at its deadline
    with FedAvg over device 0 alone; device 1 is told; its late chunks, sent into round 2, are
    refused as wrong_round and round 2 (no complete update) leaves the model unchanged."""
    from netutil import hand_chunk, hand_join, hand_result
    fleet = Fleet(tmp_path, 2)
    with AggregatorThread(fleet.config(rounds=2, min_clients=2, round_timeout=1.5, dataset=None)) as at:
        devs = [HandDevice(at.address, k, fleet.keys[k]) for k in (0, 1)]
        try:
            hello1 = devs[1].hello
            devs[1].send(hello1())          # both must have joined before round 1 opens
            joined = [hand_join(d) for d in devs]
            r, offer, w0 = joined[0]
            assert all(j[0] == r for j in joined) and all(np.array_equal(j[2], w0) for j in joined)
            rng = np.random.default_rng(5)
            updates = [codec.encode((rng.standard_normal(offer.n_params) * 0.01).astype(np.float32)) for _ in devs]
            n_up = wire.update_chunks(offer.n_params)
            assert n_up >= 2
            hand_result(devs[0], r, 100, n_up)   # n_k as announced in HELLO (hand_join: 100)
            hand_result(devs[1], r, 100, n_up)
            for i in range(n_up // 2):             # device 1 delivers half, then dies
                hand_chunk(devs[1], r, updates[1], i, n_up)
            for i in range(n_up):
                hand_chunk(devs[0], r, updates[0], i, n_up)
            told = devs[1].expect(wire.MsgType.ERROR, timeout=5)
            assert wire.ErrorMsg.unpack(told.payload).code == 101 and told.round == r
            devs[1].expect(wire.MsgType.OFFER, timeout=5, resend=hello1)   # round 2 is offered
            for i in range(n_up // 2, n_up):       # ... and only now the rest of round 1 arrives
                hand_chunk(devs[1], r, updates[1], i, n_up)
            at.wait(10)
        finally:
            for d in devs:
                d.close()
    rows = json.loads((tmp_path / "state" / "metrics.json").read_text())
    assert rows[0]["clients"] == 1 and rows[0]["closed_by"] == "deadline"
    assert rows[0]["stragglers"] == [1] and rows[0]["dropped_uploads"] == [1]
    assert rows[1]["outcome"] == "abandoned" and rows[1]["rejected"].get("wrong_round", 0) >= 1
    ck = state.load(str(tmp_path / "state"))
    oracle = w0.astype(np.float64) + updates[0].decode().astype(np.float64)   # FedAvg over the completed device
    np.testing.assert_allclose(ck.weights, oracle, rtol=0, atol=1e-6)


def test_demo_prints_the_round_table(tmp_path):
    """The README's main job: `fedtiny demo` runs an aggregator and client processes and prints
    one row per round; the rows are the simulation's numbers."""
    res = subprocess.run([sys.executable, "-m", "fedtiny.cli", "demo", "--clients", "3", "--rounds", "3",
                          "--state", str(tmp_path / "st")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["round", "clients", "samples"])
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [r[0] for r in rows] == ["1", "2", "3"] and all(r[1] == "3/3" for r in rows)
    _, want = simulate_oracle(3, 3)
    assert [float(r[5]) for r in rows] == [round(w["test_acc"], 4) for w in want]
    assert "3 rounds in" in lines[header + 4]


def test_demo_final_weights_are_simulate_bit_for_bit(tmp_path):
    """README: `fedtiny demo` gives the same weights, bit for bit, as `fedtiny simulate --dataset digits
    --model mlp:64-32-10 --clients 3 --fraction 1 --rounds 10 --codec int8-stochastic --clip-norm 1`
    (the aggregator's default bound). Both real commands, the README's 10 rounds, the demo's final
    checkpoint against simulate's params.npy."""
    demo = subprocess.run([sys.executable, "-m", "fedtiny.cli", "demo", "--clients", "3", "--rounds", "10",
                           "--state", str(tmp_path / "st")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    sim = subprocess.run([sys.executable, "-m", "fedtiny.cli", "simulate", "--dataset", "digits", "--model", MODEL,
                          "--clients", "3", "--fraction", "1", "--rounds", "10", "--codec", "int8-stochastic",
                          "--clip-norm", str(bounds.DEFAULT_CLIP_NORM), "--out", str(tmp_path / "sim")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    ck = state.load(str(tmp_path / "st"))
    assert ck.round == 10
    np.testing.assert_array_equal(ck.weights, np.load(tmp_path / "sim" / "params.npy"))
    final = [line for line in demo.stdout.splitlines() if line.startswith("10 rounds in")]
    acc = json.loads((tmp_path / "sim" / "result.json").read_text())["summary"]["final_test_acc"]
    assert final and f"final test accuracy {acc:.4f}" in final[0], demo.stdout
