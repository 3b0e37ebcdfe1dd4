"""Secure aggregation over the network: real `fedtiny client` processes and a real aggregator on
127.0.0.1, the SecAgg+ stages carried as frames (fedtiny.net.secagg_round, docs/secagg.md).

Oracles: `fedtiny simulate --secagg` with the same devices and seed (each device derives its
training seed and its stochastic-rounding key from the run's seed as simulate does, and the
unmasked sum does not depend on the masks), so the global weights must be bit for bit the
simulation's; and, for rounds with dropouts, the float64 mean of the survivors' grid values
computed here from their deltas and the grid definition (no fedtiny summation code).
"""
import signal
import threading
import time

import numpy as np
import pytest

from fedtiny import train
from fedtiny import model as model_mod
from fedtiny.net import state, wire
from fedtiny.net import secagg_round as sr
from fedtiny.privacy import grid as gridmod
from fedtiny.seeds import derive_seed
from netutil import (MODEL, AggregatorThread, Fleet, HandDevice, SessionKeys, client_logs, hand_join,
                     simulate_oracle, stop_all)
from udp_relay import LossyRelay

pytest.importorskip("cryptography")

CLIP = 1.0


def simulate_secagg(clients: int, rounds: int, seed: int = 0):
    """(final weights, rows) of `fedtiny simulate --secagg` with the network tests' settings."""
    return simulate_oracle(clients, rounds, seed, codec="float32", secagg=True, clip_norm=CLIP, max_samples=None)


def secure_config(fleet: Fleet, **kw):
    base = dict(secagg=True, clip_norm=CLIP, codec="int8", round_timeout=20.0, secagg_stage_timeout=6.0)
    base.update(kw)
    return fleet.config(**base)


def local_delta(fleet: Fleet, weights: np.ndarray, round_id: int, k: int, seed: int = 0) -> np.ndarray:
    """Device k's float32 delta from `weights`, trained as the client trains it."""
    data = np.load(fleet.data[k])
    params = weights.astype(np.float32).copy()
    train.local_sgd(model_mod.build(MODEL), params, data["x"].astype(np.float32), data["y"], epochs=1, batch_size=10,
                    lr=0.05, seed=derive_seed(seed, round_id, k, 1))
    return (params - weights.astype(np.float32)).astype(np.float32)


def grid_mean_oracle(fleet: Fleet, weights: np.ndarray, round_id: int, survivors, selected: int,
                     seed: int = 0) -> np.ndarray:
    """float64 mean of the survivors' grid vectors (clip, grid, the rounding stream of their
    derived key, all in numpy here), times the step: the mean the unmasked sum must decode to."""
    g = gridmod.Grid.for_round(CLIP, selected)
    total = sum(grid_q(local_delta(fleet, weights, round_id, k, seed), gridmod.derived_round_key(seed, round_id, k), g)
                for k in survivors)
    return total * g.step / len(survivors)


def run_fleet(tmp_path, clients, rounds, *, tap=None, kill=None, cfg_kw=None, timeout=90, fleet=None, loss=None):
    """A secure federation of `clients` real client processes. kill: ({device: phase}) -- the
    client process is SIGKILLed at that phase of round 1 (see _killer)."""
    fleet = fleet or Fleet(tmp_path, clients)
    cfg = secure_config(fleet, rounds=rounds, **(cfg_kw or {}))
    procs = []
    try:
        with AggregatorThread(cfg) as agg:
            addr = agg.server
            relay = None
            if tap is not None or loss is not None:
                lossy = loss or dict(drop=0, duplicate=0, reorder=0)
                relay = LossyRelay(agg.address, tap=tap, **lossy).__enter__()
                addr = f"{relay.addr[0]}:{relay.addr[1]}"
            try:
                procs = fleet.start_clients(addr)
                restore = _killer(procs, kill or {})
                try:
                    agg.wait(timeout)
                finally:
                    restore()
            finally:
                if relay is not None:
                    relay.__exit__(None, None, None)
        codes = []
        for p in procs:   # the aggregator tells them it finished: they exit by themselves
            try:
                codes.append(p.wait(timeout=10))
            except Exception:
                codes.append(None)
        return fleet, cfg, agg.agg, codes, client_logs(procs)
    finally:
        stop_all(procs)


def _killer(procs, kill: dict):
    """SIGKILL device d's client, in round 1, right after the aggregator accepted its message of
    the phase (keys: its KEYS, so it never sends shares; shares: its SHARES; masked: its whole
    masked vector, so it never reveals shares) or, for 'unmask', when the unmask request goes out
    (it may or may not answer). Runs in the aggregator's thread, before the stage can close."""
    phase_type = {"keys": wire.MsgType.SECAGG_KEYS, "shares": wire.MsgType.SECAGG_SHARES}
    real_on_frame, real_advance = sr.SecureRound.on_frame, sr.SecureRound._advance

    def kill_now(d):
        if procs[d].poll() is None:
            procs[d].send_signal(signal.SIGKILL)
            procs[d].wait()

    def on_frame(self, device, f, now):
        try:
            real_on_frame(self, device, f, now)
        finally:
            phase = kill.get(device)
            if self.id == 1 and phase is not None:
                if phase in phase_type and (device, phase_type[phase]) in self.accepted:
                    kill_now(device)
                elif phase == "masked" and device in self.staged and self.staged[device].done:
                    kill_now(device)

    def advance(self, now):
        real_advance(self, now)
        if self.id == 1 and self.server.stage == "unmask":
            for d, phase in kill.items():
                if phase == "unmask":
                    kill_now(d)
    sr.SecureRound.on_frame, sr.SecureRound._advance = on_frame, advance

    def restore():
        sr.SecureRound.on_frame, sr.SecureRound._advance = real_on_frame, real_advance
    return restore


class MaskedCapture:
    """What crossed the wire, decoded with the devices' keys (a LossyRelay tap): each round's model
    (MODEL_CHUNK, down) and each device's masked vector (MASKED_UPDATE, up), as the aggregator --
    or anyone on the path -- receives them."""

    def __init__(self, device_keys):
        self.keys = SessionKeys(device_keys)
        self.lock = threading.Lock()
        self.models: dict[int, dict[int, bytes]] = {}
        self.masked: dict[tuple[int, int], dict[int, bytes]] = {}

    def __call__(self, direction: str, data: bytes) -> None:
        with self.lock:
            f = self.keys.decode(data)
            if f is None:
                return
            if direction == "down" and f.type == wire.MsgType.MODEL_CHUNK:
                self.models.setdefault(f.round, {})[f.chunk_index] = bytes(f.payload)
            elif direction == "up" and f.type == wire.MsgType.MASKED_UPDATE:
                self.masked.setdefault((f.round, f.device_id), {})[f.chunk_index] = bytes(f.payload)

    def model(self, r: int) -> np.ndarray:
        parts = self.models[r]
        return np.frombuffer(b"".join(parts[i] for i in range(len(parts))), "<f4")

    def vector(self, r: int, device: int) -> np.ndarray:
        parts = self.masked[(r, device)]
        return np.frombuffer(b"".join(parts[i] for i in range(len(parts))), "<u2")


def test_ten_client_processes_reproduce_simulate_secagg_bit_for_bit(tmp_path):
    """The bit-for-bit oracle, and on the same run the aggregator's view: every masked vector as
    captured on the wire is uniform modulo 2^16 (chi-square over 256 bins) and uncorrelated with
    the device's grid vector, which the same test shows a plain upload would reveal."""
    weights, rows = simulate_secagg(10, 3)
    fleet = Fleet(tmp_path, 10)
    capture = {"tap": MaskedCapture(fleet.keys)}
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 10, 3, tap=capture["tap"], fleet=fleet)
    assert codes == [0] * 10, logs
    ck = state.load(cfg.state)
    assert ck.round == 3
    np.testing.assert_array_equal(ck.weights, weights)   # bit for bit
    for got, want in zip(ck.metrics, rows):
        assert got["secagg_outcome"] == want["secagg_outcome"] == "applied"
        assert got["survivors"] == want["survivors"] == 10 and got["clients"] == 10
        assert got["test_acc"] == want["test_acc"]
        assert got["rejected"] == {}, got["rejected"]
    cap = capture["tap"]
    g = gridmod.Grid.for_round(CLIP, 10)
    words, corr_masked, corr_plain = [], [], []
    for r in (1, 2, 3):
        w = cap.model(r)
        for k in range(10):
            y = cap.vector(r, k)
            assert y.size == w.size                      # 2 bytes per parameter on the wire
            q = grid_q(local_delta(fleet, w, r, k), gridmod.derived_round_key(0, r, k), g)
            centered = np.where(y >= 2 ** 15, y.astype(np.int64) - 2 ** 16, y.astype(np.int64))
            corr_masked.append(abs(np.corrcoef(centered, q)[0, 1]))
            corr_plain.append(np.corrcoef(local_delta(fleet, w, r, k), q)[0, 1])
            words.append(y)
    n = w.size
    assert max(corr_masked) < 5 / np.sqrt(n), corr_masked          # chance: ~1/sqrt(n) = 0.02
    assert min(corr_plain) > 0.9                                   # without masks the update shows
    counts = np.bincount((np.concatenate(words) >> 8).astype(np.int64), minlength=256)
    expected = counts.sum() / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 255 + 6 * np.sqrt(2 * 255), chi2                 # 255 degrees of freedom


def test_lossy_relay_secure_rounds_complete_exactly(tmp_path):
    """10% of datagrams lost, 5% duplicated, 10% reordered, both ways: every stage message or answer
    that is lost is sent again (the aggregator resends a stage's message, a device answers it with
    its cached answer; masked-vector chunks follow the ACK bitmap), so every device survives and
    the weights are simulate --secagg's, bit for bit."""
    weights, _ = simulate_secagg(5, 3)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 5, 3, loss=dict(drop=0.10, duplicate=0.05, reorder=0.10, seed=3))
    ck = state.load(cfg.state)
    assert [r["survivors"] for r in ck.metrics] == [5, 5, 5], [r.get("secagg_detail") for r in ck.metrics]
    np.testing.assert_array_equal(ck.weights, weights)


@pytest.mark.parametrize("phase", ["keys", "shares", "masked", "unmask"])
def test_a_client_killed_in_each_phase_the_round_is_exact_with_the_survivors(tmp_path, phase):
    """10 devices (k = 9, t = 5, min_survivors 6): device 3 is killed at `phase` of round 1. The
    round completes; the new model is the start model plus the float64 mean of exactly the
    survivors' grid vectors (a device whose vector is in survives: masked, unmask)."""
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 10, 1, kill={3: phase}, cfg_kw=dict(round_timeout=12.0))
    ck = state.load(cfg.state)
    row = ck.metrics[0]
    assert row["secagg_outcome"] == "applied", row
    stages = row["secagg_stages"]
    want_survivors = 10 if phase in ("masked", "unmask") else 9
    assert row["survivors"] == row["clients"] == want_survivors, row
    if phase == "keys":
        assert stages == {"keys": 10, "shares": 9, "masked": 9, "unmask": 9}, stages
    elif phase == "shares":
        assert stages == {"keys": 10, "shares": 10, "masked": 9, "unmask": 9}, stages
    elif phase == "masked":
        assert stages == {"keys": 10, "shares": 10, "masked": 10, "unmask": 9}, stages
    survivors = [d for d in range(10) if want_survivors == 10 or d != 3]
    w0 = model_mod.build(MODEL).init(0)
    want = w0.astype(np.float64) + grid_mean_oracle(fleet, w0, 1, survivors, 10)
    np.testing.assert_allclose(ck.weights, want, rtol=0, atol=2e-6)   # one grid unit is 3e-5 here
    assert codes[3] == -signal.SIGKILL
    assert [c for d, c in enumerate(codes) if d != 3] == [0] * 9, logs


def test_below_the_threshold_the_round_is_abandoned_and_the_model_unchanged(tmp_path):
    """5 of 10 devices killed after their keys: 5 share messages < min_survivors 6."""
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 10, 1, kill={d: "keys" for d in range(5)})
    ck = state.load(cfg.state)
    row = ck.metrics[0]
    assert row["secagg_outcome"] == "abandoned" and row["secagg_reason"] == "too_few_shares", row
    assert "5 devices sent shares, minimum 6" in row["secagg_detail"]
    assert row["clients"] == 0 and row["survivors"] == 0
    np.testing.assert_array_equal(ck.weights, model_mod.build(MODEL).init(0))


# --- a keyed device that misbehaves ---------------------------------------------------------------

def _send_msg(dev: HandDevice, msg_type, round_id: int, data: bytes) -> None:
    parts = sr.chunks(msg_type, data)
    for i, p in enumerate(parts):
        dev.send(dev.frame(msg_type, round_id, p, chunk=(i, len(parts))))


def _recv_msg(dev: HandDevice, msg_type, timeout: float = 10.0) -> bytes:
    parts, count = {}, None
    end = time.monotonic() + timeout
    while count is None or len(parts) < count:
        f = dev.expect(msg_type, end - time.monotonic())
        count = f.chunk_count
        parts[f.chunk_index] = bytes(f.payload)
    return b"".join(parts[i] for i in range(count))


def grid_q(delta: np.ndarray, key: bytes, g) -> np.ndarray:
    """The grid vector of one delta in numpy (clip, scale, rounding stream of key): the oracle."""
    import struct

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    norm = np.sqrt(np.sum(delta.astype(np.float64) ** 2))
    scale = np.float32(1.0 if norm <= g.clip else g.clip / norm)
    enc = Cipher(algorithms.ChaCha20(key, struct.pack("<I", 0) + b"fedtiny-srnd"), None).encryptor()
    r = np.frombuffer(enc.update(bytes(4 * delta.size)), "<u4")
    t = np.clip(delta * (scale / np.float32(g.step)), -g.qmax, g.qmax).astype(np.float32)
    fl = np.floor(t)
    return fl + ((r >> 8).astype(np.float64) * 2.0 ** -24 < (t - fl))


def test_hostile_frames_from_a_keyed_device_are_counted_and_never_reach_the_sum(tmp_path):
    """10 real clients and one keyed device driven by hand (id 10) in a secure round. It replays
    its KEYS datagram, sends a second different KEYS, shares with one addressed to a device that
    is not in the round, a masked vector of the wrong length, then its honest messages, then a
    chunk of a second, different masked vector. Each is dropped and counted by reason; the round's
    model is the start model plus the float64 mean of the 11 honest grid vectors."""
    from fedtiny.privacy import secagg
    fleet = Fleet(tmp_path, 10)
    cfg = secure_config(fleet, rounds=1, min_clients=11, secagg_stage_timeout=8.0)
    hand_id = 10
    delta = (np.random.default_rng(5).standard_normal(model_mod.build(MODEL).n_params) * 0.01).astype(np.float32)
    key = bytes(range(32))
    procs = []
    try:
        with AggregatorThread(cfg) as agg:
            dev = HandDevice(agg.address, hand_id, fleet.keys[hand_id])
            procs = fleet.start_clients(agg.server)
            r, offer, w0 = hand_join(dev, offer_timeout=60)   # the round opens when the 10 processes joined
            assert offer.fixed_scale == pytest.approx(CLIP)
            setup = sr.parse_setup(r, _recv_msg(dev, wire.MsgType.SECAGG_SETUP))
            machine = secagg.Device(hand_id)
            keys_bytes = sr.pack_keys(machine.on_setup(setup))
            keys_frame = dev.frame(wire.MsgType.SECAGG_KEYS, r, keys_bytes)
            dev.send(keys_frame)
            dev.send(keys_frame)                                   # replayed datagram: the window
            dev.send(dev.frame(wire.MsgType.SECAGG_KEYS, r, bytes(96 - len(keys_bytes[:64])) + keys_bytes[32:]))
            key_list = sr.parse_key_list(r, _recv_msg(dev, wire.MsgType.SECAGG_KEY_LIST))
            shares = machine.on_key_list(key_list).ciphertexts
            stolen = dict(shares)
            stolen[999] = stolen.pop(min(stolen))                  # one share to a device not in the round
            _send_msg(dev, wire.MsgType.SECAGG_SHARES, r, sr.pack_cipher_list(stolen))
            _send_msg(dev, wire.MsgType.SECAGG_SHARES, r, sr.pack_cipher_list(shares))
            machine.on_share_list(secagg.ShareList(r, sr.parse_cipher_list(
                _recv_msg(dev, wire.MsgType.SECAGG_SHARE_LIST), "SHARE_LIST")))
            y = machine.masked_update(delta, key).payload
            n = len(sr.chunks(wire.MsgType.MASKED_UPDATE, y))
            dev.send(dev.frame(wire.MsgType.MASKED_UPDATE, r, y[:1152], chunk=(0, n + 1)))   # wrong length
            dev.send(dev.frame(wire.MsgType.MASKED_UPDATE, r, y[-2:], chunk=(n - 1, n)))       # short last chunk
            _send_msg(dev, wire.MsgType.MASKED_UPDATE, r, y)
            ack = wire.Ack.unpack(dev.expect(wire.MsgType.ACK).payload)
            while len(ack.received) < n:
                ack = wire.Ack.unpack(dev.expect(wire.MsgType.ACK).payload)
            other = bytes(b ^ 1 for b in y[:1152])
            dev.send(dev.frame(wire.MsgType.MASKED_UPDATE, r, other, chunk=(0, n)))   # a second vector
            unmask = sr.parse_ids(_recv_msg(dev, wire.MsgType.SECAGG_UNMASK), "UNMASK")
            assert unmask == tuple(range(11))
            _send_msg(dev, wire.MsgType.SECAGG_UNMASK_SHARES, r,
                      sr.pack_unmask_shares(machine.on_unmask(secagg.Unmask(r, unmask))))
            agg.wait(40)
            dev.close()
    finally:
        stop_all(procs)
    ck = state.load(cfg.state)
    row = ck.metrics[0]
    assert row["secagg_outcome"] == "applied" and row["survivors"] == 11, row
    rej = row["rejected"]
    assert rej.get("replay") == 1 and rej.get("key_conflict") == 1, rej
    assert rej.get("share_misaddressed") == 1 and rej.get("wrong_length") == 2, rej
    assert rej.get("conflicting_update") == 1, rej
    g = gridmod.Grid.for_round(CLIP, 11)
    w0 = model_mod.build(MODEL).init(0)
    want = w0.astype(np.float64) + grid_mean_oracle(fleet, w0, 1, range(10), 11) * 10 / 11 \
        + grid_q(delta, key, g) * g.step / 11
    np.testing.assert_allclose(ck.weights, want, rtol=0, atol=2e-6)


def test_demo_secagg_is_simulate_secagg_bit_for_bit(tmp_path):
    """README: `fedtiny demo --secagg` ends with the weights of `fedtiny simulate --secagg` with
    the same devices, seed and clip bound (the aggregator's default --clip-norm 1), bit for bit."""
    import subprocess
    import sys
    demo = subprocess.run([sys.executable, "-m", "fedtiny.cli", "demo", "--secagg", "--clients", "5", "--rounds", "4",
                           "--state", str(tmp_path / "st")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "SecAgg+ masked updates" in demo.stdout
    sim = subprocess.run([sys.executable, "-m", "fedtiny.cli", "simulate", "--dataset", "digits", "--model", MODEL,
                          "--clients", "5", "--fraction", "1", "--rounds", "4", "--secagg", "--clip-norm", "1",
                          "--out", str(tmp_path / "sim")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    ck = state.load(str(tmp_path / "st"))
    assert ck.round == 4 and all(r["secagg_outcome"] == "applied" for r in ck.metrics)
    np.testing.assert_array_equal(ck.weights, np.load(tmp_path / "sim" / "params.npy"))


@pytest.mark.parametrize("argv,message", [
    (["--secagg-k", "3"], "--secagg-k needs --secagg"),
    (["--secagg", "--clip-norm", "0"], "--secagg needs --clip-norm C > 0"),
    (["--secagg", "--secagg-t", "9", "--min-clients", "4"], "--secagg-t 9 must be in [1, k = 3]"),
    (["--secagg", "--secagg-stage-timeout", "0"], "--secagg-stage-timeout must be > 0"),
])
def test_aggregate_secagg_argument_errors_are_one_line(tmp_path, argv, message):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "fedtiny.cli", "aggregate", "--keys", "k", "--state", "s", *argv],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


# --- payload layouts (no network) ----------------------------------------------------------------

def test_every_stage_message_round_trips_and_its_chunks_pass_the_c_codec():
    """A round of 40 devices (k = 38 neighbours: lists longer than one payload): each message packs,
    cuts into chunks the C codec accepts (whole entries), and parses back to the same value."""
    from fedtiny.privacy import secagg
    setup = secagg.Setup.create(7, range(100, 140), secagg.Config(clip=0.1, neighbours=38))
    got = sr.parse_setup(7, sr.pack_setup(setup))
    assert got == setup and got.grid.clip == 0.1                # clip travels as float64
    devs = {d: secagg.Device(d) for d in setup.devices}
    keys = {d: m.on_setup(setup) for d, m in devs.items()}
    for d, k in keys.items():
        assert sr.parse_keys(7, d, sr.pack_keys(k)) == k
    kl = secagg.KeyList(7, {v: (keys[v].c_pk, keys[v].s_pk, keys[v].commit) for v in setup.neighbours(100)})
    shares = devs[100].on_key_list(kl)
    unmask = secagg.UnmaskShares(7, 100, {v: (i + 1, bytes([i]) * 32) for i, v in enumerate(setup.devices[1:20])},
                                 {v: (i + 1, bytes([i]) * 32) for i, v in enumerate(setup.devices[20:])})
    cases = [(wire.MsgType.SECAGG_SETUP, sr.pack_setup(setup), lambda b: sr.parse_setup(7, b), setup),
             (wire.MsgType.SECAGG_KEY_LIST, sr.pack_key_list(kl), lambda b: sr.parse_key_list(7, b), kl),
             (wire.MsgType.SECAGG_SHARES, sr.pack_cipher_list(shares.ciphertexts),
              lambda b: sr.parse_cipher_list(b, "SHARES"), dict(shares.ciphertexts)),
             (wire.MsgType.SECAGG_UNMASK, sr.pack_ids(setup.devices), lambda b: sr.parse_ids(b, "UNMASK"),
              setup.devices),
             (wire.MsgType.SECAGG_UNMASK_SHARES, sr.pack_unmask_shares(unmask),
              lambda b: sr.parse_unmask_shares(7, 100, b), unmask)]
    for t, data, parse, want in cases:
        parts = sr.chunks(t, data)
        if t in (wire.MsgType.SECAGG_KEY_LIST, wire.MsgType.SECAGG_SHARES, wire.MsgType.SECAGG_UNMASK_SHARES):
            assert len(parts) > 1     # 38 entries: more than one payload
        for i, p in enumerate(parts):
            f = wire.decode(wire.encode(t, 1, 7, 1 + i, p, bytes(32), chunk=(i, len(parts))), bytes(32), None)
            assert f.payload == p
        asm = sr.Assembly(t, len(parts))
        assert [asm.add(i, len(parts), p) for i, p in enumerate(parts)][-1] == "complete"
        assert parse(asm.data()) == want


def test_malformed_stage_payloads_are_refused_by_name():
    with pytest.raises(sr.PayloadError, match="strictly increasing"):
        sr.parse_ids(sr.ID_ENTRY.pack(5) + sr.ID_ENTRY.pack(5), "UNMASK")
    with pytest.raises(sr.PayloadError, match="whole number"):
        sr.parse_key_list(1, bytes(150))
    with pytest.raises(sr.PayloadError, match="kind"):
        sr.parse_unmask_shares(1, 2, sr.UNMASK_ENTRY.pack(3, 2, 1, bytes(32)))
    head = sr.SETUP_HEAD.pack(bytes(16), bytes(16), 3, 2, 2, 3, 16, 0, 0.0, 1.0)
    with pytest.raises(sr.PayloadError, match="names 2 devices"):
        sr.parse_setup(1, head + sr.pack_ids([1, 2]))
    with pytest.raises(sr.PayloadError, match="grid"):
        sr.parse_setup(1, sr.SETUP_HEAD.pack(bytes(16), bytes(16), 2, 1, 1, 2, 8, 0, 0.0, 1.0) + sr.pack_ids([1, 2]))
    asm = sr.Assembly(wire.MsgType.SECAGG_KEY_LIST, 2)
    assert asm.add(0, 2, bytes(1100)) == "added"
    assert asm.add(0, 2, bytes(1000) + b"\1" * 100) == "conflict"
    assert asm.add(1, 3, bytes(100)) == "bad_chunk"
    assert asm.add(1, 2, b"") == "bad_chunk"
    assert asm.add(1, 2, bytes(100)) == "complete"


@pytest.mark.slow
def test_hundred_client_processes_secagg_sparse_graph_reproduce_simulate(tmp_path):
    """100 real client processes, every one in each of 2 rounds: a sparse graph (k = 40
    neighbours, t = 21), b = 16 (100 devices <= 127), lists longer than one frame; the weights
    are simulate --secagg's, bit for bit."""
    weights, rows = simulate_secagg(100, 2)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 100, 2, timeout=600,
                                             cfg_kw=dict(round_timeout=240.0, secagg_stage_timeout=60.0))
    ck = state.load(cfg.state)
    assert [r["survivors"] for r in ck.metrics] == [100, 100], [r.get("secagg_detail") for r in ck.metrics]
    assert all(r["rejected"] == {} for r in ck.metrics), [r["rejected"] for r in ck.metrics]
    np.testing.assert_array_equal(ck.weights, weights)
    assert codes == [0] * 100, logs[-3000:]


def test_a_round_whose_selection_the_secagg_options_do_not_fit_is_abandoned_by_name():
    """--secagg-k 3 passes the start check for --min-clients 4 (every pair: k = n - 1) but not a
    round of 8 devices (a sparse graph needs an even k): the round is abandoned with that reason,
    no device is sent anything, the model is unchanged."""
    from fedtiny import rounds as rounds_mod
    from fedtiny.privacy import secagg
    agg = sr.AggregatorSecAgg(secagg.Config(clip=1.0, neighbours=3))   # odd k: only k = n - 1 (n = 4) is allowed
    sent = []
    server = rounds_mod.Server(np.zeros(10, np.float32))
    rnd = server.open_round(list(range(8)))
    why = agg.open(1, list(range(8)), 10, lambda *a: sent.append(a), 0.0, 10.0)
    assert "--secagg-k 3: a sparse graph needs an even k" in why and sent == []
    assert agg.poll(0.0)
    row = agg.close(rnd, why)
    assert row["secagg_outcome"] == "abandoned" and row["secagg_reason"] == "bad_config" and row["survivors"] == 0
    server.close_round(1.0)
    np.testing.assert_array_equal(server.params, np.zeros(10, np.float32))


def test_the_python_receive_path_runs_secure_rounds_too(tmp_path):
    """--ingest python (the reference receive path) hands the same frames to the same hooks."""
    weights, _ = simulate_secagg(4, 2)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 4, 2, cfg_kw=dict(ingest="python"))
    assert codes == [0] * 4, logs
    np.testing.assert_array_equal(state.load(cfg.state).weights, weights)
