"""Secure aggregation over the network: real `fedtiny client` processes and a real aggregator on
127.0.0.1, the SecAgg+ stages carried as frames (fedtiny.net.secagg_round, docs/secagg.md).

Oracles: `fedtiny simulate --secagg` with the same devices and seed (each device derives its
training seed and its stochastic-rounding key from the run's seed as simulate does, and the
unmasked sum does not depend on the masks), so the global weights must be bit for bit the
simulation's; and, for rounds with dropouts, the float64 mean of the survivors' grid values
computed here from their deltas and the grid definition (no fedtiny summation code).
"""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from fedtiny import simulate, train
from fedtiny import model as model_mod
from fedtiny.net import state, wire
from fedtiny.net import secagg_round as sr
from fedtiny.privacy import grid as gridmod
from fedtiny.seeds import derive_seed
from netutil import (MODEL, AggregatorThread, Fleet, HandDevice, SessionKeys, client_logs, hand_join, stop_all,
                     wait_for)
from udp_relay import LossyRelay

pytest.importorskip("cryptography")

CLIP = 1.0


def simulate_secagg(clients: int, rounds: int, seed: int = 0):
    """(final weights, rows) of `fedtiny simulate --secagg` with the network tests' settings."""
    from fedtiny import rounds as rounds_mod
    servers = []
    real_init = rounds_mod.Server.__init__

    def capture(self, *a, **kw):
        real_init(self, *a, **kw)
        servers.append(self)
    rounds_mod.Server.__init__ = capture
    try:
        cfg = simulate.SimConfig(dataset="digits", model=MODEL, clients=clients, fraction=1.0, rounds=rounds,
                                 lr=0.05, batch=10, codec="float32", seed=seed, secagg=True, clip_norm=CLIP)
        result = simulate.run(cfg)
    finally:
        rounds_mod.Server.__init__ = real_init
    return servers[0].params.copy(), result.rounds


def secure_config(fleet: Fleet, **kw):
    base = dict(secagg=True, clip_norm=CLIP, codec="int8", round_timeout=20.0, secagg_stage_timeout=3.0)
    base.update(kw)
    return fleet.config(**base)


def grid_mean_oracle(fleet: Fleet, weights: np.ndarray, round_id: int, survivors, selected: int,
                     seed: int = 0) -> np.ndarray:
    """float64 mean of the survivors' grid vectors (clip, grid, the rounding stream of their
    derived key, all in numpy here), times the step: the mean the unmasked sum must decode to."""
    import struct

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    model = model_mod.build(MODEL)
    g = gridmod.Grid.for_round(CLIP, selected)
    total = np.zeros(weights.size, np.float64)
    for k in survivors:
        data = np.load(fleet.data[k])
        x, y = data["x"].astype(np.float32), data["y"]
        params = weights.astype(np.float32).copy()
        train.local_sgd(model, params, x, y, epochs=1, batch_size=10, lr=0.05, seed=derive_seed(seed, round_id, k, 1))
        delta = (params - weights.astype(np.float32)).astype(np.float32)
        norm = np.sqrt(np.sum(delta.astype(np.float64) ** 2))
        scale = np.float32(1.0 if norm <= CLIP else CLIP / norm)
        key = gridmod.derived_round_key(seed, round_id, k)
        enc = Cipher(algorithms.ChaCha20(key, struct.pack("<I", 0) + b"fedtiny-srnd"), None).encryptor()
        r = np.frombuffer(enc.update(bytes(4 * delta.size)), "<u4")
        t = np.clip(delta * (scale / np.float32(g.step)), -g.qmax, g.qmax).astype(np.float32)
        fl = np.floor(t)
        q = fl + ((r >> 8).astype(np.float64) * 2.0 ** -24 < (t - fl))
        total += q
    return total * g.step / len(survivors)


def run_fleet(tmp_path, clients, rounds, *, tap=None, kill=None, cfg_kw=None, timeout=90):
    """A secure federation of `clients` real client processes. kill: ({device: phase}) -- the
    client process is SIGKILLed at that phase of round 1 (see _killer)."""
    fleet = Fleet(tmp_path, clients)
    cfg = secure_config(fleet, rounds=rounds, **(cfg_kw or {}))
    procs = []
    try:
        with AggregatorThread(cfg) as agg:
            addr = agg.server
            relay = None
            if tap is not None:
                relay = LossyRelay(agg.address, drop=0, duplicate=0, reorder=0, tap=tap).__enter__()
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


def test_ten_client_processes_reproduce_simulate_secagg_bit_for_bit(tmp_path):
    weights, rows = simulate_secagg(10, 3)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 10, 3)
    assert codes == [0] * 10, logs
    ck = state.load(cfg.state)
    assert ck.round == 3
    np.testing.assert_array_equal(ck.weights, weights)   # bit for bit
    for got, want in zip(ck.metrics, rows):
        assert got["secagg_outcome"] == want["secagg_outcome"] == "applied"
        assert got["survivors"] == want["survivors"] == 10 and got["clients"] == 10
        assert got["test_acc"] == want["test_acc"]
        assert got["rejected"] == {}, got["rejected"]


@pytest.mark.parametrize("phase", ["keys", "shares", "masked", "unmask"])
def test_a_client_killed_in_each_phase_the_round_is_exact_with_the_survivors(tmp_path, phase):
    """10 devices (k = 9, t = 5, min_survivors 6): device 3 is killed at `phase` of round 1. The
    round completes; the new model is the start model plus the float64 mean of exactly the
    survivors' grid vectors (a device whose vector is in survives: masked, unmask)."""
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, 10, 1, kill={3: phase})
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
