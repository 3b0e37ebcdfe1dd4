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
    """A secure federation of `clients` real client processes; kill: (device, phase) -> the client
    process is SIGKILLed when the aggregator's round-1 stage reaches `phase`."""
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
                if kill is not None:
                    _kill_at(agg, procs, *kill)
                agg.wait(timeout)
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


def _kill_at(agg, procs, device, phase):
    """SIGKILL the client of `device` when round 1's secure stage reaches `phase`: 'keys' (it has
    sent its keys), 'shares' (its shares are in), 'masked' (its vector is in), 'unmask' (the unmask
    request is out: it may or may not answer)."""
    def answered(stage):
        r = agg.agg.secagg.round
        return r is not None and r.id == 1 and device in r.server.answered() and r.server.stage == stage

    def reached(stage):
        r = agg.agg.secagg.round
        return r is not None and r.id == 1 and r.server.stage == stage
    cond = {"keys": lambda: answered("keys"), "shares": lambda: answered("shares"),
            "masked": lambda: answered("masked"), "unmask": lambda: reached("unmask")}[phase]
    wait_for(cond, 30, f"round 1 at {phase}")
    procs[device].send_signal(signal.SIGKILL)


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
