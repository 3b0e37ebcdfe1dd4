"""The network modes at fleet size: 100 real `fedtiny client` processes on 127.0.0.1 each
(slow: minutes on 2 cores; CI runs them, see docs/testing.md "Fleet-size runs").

- `--mode async` (FedBuff, fedtiny/net/buffered.py): 99 fast devices and a slow one, 10 devices
  killed with -9 mid-run and restarted. Oracle: the accepted (device, version, n_k) sequence in the
  checkpoint replayed through fedtiny.rounds.Server (tests/test_async_net.py `replay`) gives the
  aggregator's model bit for bit; no accepted update is more than --max-staleness steps old.
- `--codec 1bit-rot-ef --down-codec int8`: bit for bit `fedtiny simulate` with the same flags.
- `--secagg --dp distributed`: the released sum minus the survivors' noise-free vectors
  (recomputed in numpy, tests/test_dp_secagg_net.py) has the variance of their noise shares.

These live in their own file so that the mutants pointed at the small network tests do not run them.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedtiny.net import state
from fedtiny.net.demo import client_command
from netutil import (CLIENT_ENV, MODEL, AggregatorThread, Fleet, client_logs, free_udp_port, simulate_oracle, stop_all,
                     wait_for)
from test_async_net import _aggregate_cmd, _write_fleet, replay

FLEET = 100


# --- asynchronous (FedBuff) at fleet size ---------------------------------------------------------

def _rows(state_dir) -> list:
    """The checkpoint's metrics rows ([] before the first step)."""
    for _ in range(100):
        try:
            ckpt = state.load(state_dir)
        except ValueError:     # read between the files of a save: again
            time.sleep(0.01)
            continue
        return [] if ckpt is None else ckpt.metrics
    raise AssertionError(f"{state_dir}: no readable checkpoint")


def _served(state_dir) -> set:
    return {d for r in _rows(state_dir) for d, *_ in r["arrivals"]}


def _steps(state_dir) -> int:
    return len(_rows(state_dir))


A_K, A_M, A_S, A_STEPS = 10, 20, 2, 250
KILLED = tuple(range(10, 20))


@pytest.mark.slow
def test_async_hundred_client_processes_kills_restarts_replay_bit_for_bit(tmp_path):
    """--buffer 10 --concurrency 20 --max-staleness 2, 250 server steps (2,500 accepted updates):
    once every fast device has been served (longest idle first: the processes start over several
    seconds here), ten are killed, none of theirs is accepted while they are gone, all ten are
    accepted again after their restart; no accepted update is more than 2 steps old and the model
    is the replay's, bit for bit."""
    t0 = time.monotonic()
    keyfile, paths = _write_fleet(str(tmp_path), FLEET - 1)          # devices 0..98 fast, 99 slow
    slow = FLEET - 1
    state_dir = str(tmp_path / "state")
    port = free_udp_port()
    server = f"127.0.0.1:{port}"
    log_path = tmp_path / "aggregate.log"
    with open(log_path, "w") as out:
        agg = subprocess.Popen(_aggregate_cmd(port, keyfile, state_dir, A_STEPS, "--buffer", str(A_K), "--concurrency",
                                              str(A_M), "--max-staleness", str(A_S), "--round-timeout", "10"),
                               env=CLIENT_ENV, cwd=str(tmp_path), stdout=out, stderr=subprocess.STDOUT)

    def start_client(k):
        # nice 10: the devices share 2 cores with the aggregator here (tests/fleet.py)
        with open(tmp_path / f"client{k}.log", "a") as err:
            return subprocess.Popen(["nice", "-n", "10", *client_command(server, k, keyfile, paths[k], MODEL)],
                                    env=CLIENT_ENV, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=err)

    clients = {k: start_client(k) for k in range(FLEET)}
    procs = [agg, *clients.values()]
    try:
        wait_for(lambda: _served(state_dir) >= set(range(FLEET - 1)), 300, "every fast device served")
        for k in KILLED:                       # ten devices die, most of them mid-task ...
            clients[k].send_signal(signal.SIGKILL)
            clients[k].wait()
        killed_at = _steps(state_dir)
        wait_for(lambda: _steps(state_dir) >= killed_at + 8, 300, "8 server steps with ten devices gone")
        restarted_at = _steps(state_dir)
        for k in KILLED:                       # ... and come back (new processes, new sessions)
            clients[k] = start_client(k)
            procs.append(clients[k])
            assert _steps(state_dir) < A_STEPS - 50, "too few steps left to see the restarted devices back"
        assert agg.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    finally:
        stop_all(procs)
    wall = time.monotonic() - t0
    ckpt = state.load(state_dir)
    rows = ckpt.metrics
    assert ckpt.round == A_STEPS and [r["round"] for r in rows] == list(range(1, A_STEPS + 1))
    assert all(len(r["arrivals"]) == A_K for r in rows)
    taus = [r["round"] - tag for r in rows for _, tag, _, _ in r["arrivals"]]
    assert 0 <= min(taus) and max(taus) <= A_S, taus          # nothing too stale reached the model
    assert all(r["in_flight_max"] <= A_M for r in rows)
    served = {d for r in rows for d, *_ in r["arrivals"]}
    assert served >= set(range(FLEET - 1)), sorted(set(range(FLEET - 1)) - served)
    back = {d for r in rows if r["round"] > restarted_at + 1 for d, *_ in r["arrivals"]}
    assert set(KILLED) <= back, sorted(set(KILLED) - back)     # the restarted processes' updates count again
    while_gone = {d for r in rows if killed_at + 1 < r["round"] <= restarted_at for d, *_ in r["arrivals"]}
    assert not while_gone & set(KILLED), sorted(while_gone & set(KILLED))
    stale = sum(r["rejected_stale"] for r in rows)
    assert stale >= 1 and stale == sum(r["rejected"].get("too_stale", 0) for r in rows)   # refusals happened
    # the model: the round logic replayed with the recorded arrival order, bit for bit
    expected = replay(rows, paths, k=A_K, s=A_S)
    np.testing.assert_array_equal(ckpt.weights, expected)
    print(f"\nasync fleet: {FLEET} processes, {A_STEPS} steps of {A_K}, {len(served)} devices served, "
          f"staleness max {max(taus)} mean {np.mean(taus):.2f}, refused too stale {stale} "
          f"(slow device {slow}: {sum(1 for r in rows for d, *_ in r['arrivals'] if d == slow)} accepted), "
          f"killed after step {killed_at}, restarted after step {restarted_at}, wall {wall:.0f} s")


# --- compressed both ways at fleet size -----------------------------------------------------------

C_ROUNDS = 2


@pytest.mark.slow
def test_hundred_client_processes_1bit_up_int8_down_reproduce_simulate(tmp_path):
    """--codec 1bit-rot-ef --down-codec int8, every one of 100 devices in each of 2 rounds: the
    final weights are `fedtiny simulate`'s with the same flags, bit for bit (zero tolerance)."""
    t0 = time.monotonic()
    weights, sim_rows = simulate_oracle(FLEET, C_ROUNDS, codec="1bit-rot-ef", down_codec="int8")
    fleet = Fleet(tmp_path, FLEET)
    cfg = fleet.config(rounds=C_ROUNDS, codec="1bit-rot-ef", down_codec="int8", round_timeout=240.0)
    procs = []
    try:
        with AggregatorThread(cfg) as agg:
            procs = fleet.start_clients(agg.server)
            agg.wait(600)
        codes = [p.wait(timeout=30) for p in procs]    # told that training finished: they exit by themselves
        logs = client_logs(procs)
    finally:
        stop_all(procs)
    ck = state.load(cfg.state)
    assert ck.round == C_ROUNDS and codes == [0] * FLEET, logs[-3000:]
    assert [r["clients"] for r in ck.metrics] == [FLEET] * C_ROUNDS == [r["clients"] for r in sim_rows]
    assert all(r["rejected"] == {} for r in ck.metrics), [r["rejected"] for r in ck.metrics]
    np.testing.assert_array_equal(ck.weights, weights)
    assert [r["test_acc"] for r in ck.metrics] == [r["test_acc"] for r in sim_rows]
    print(f"\n1bit-rot-ef up, int8 down: {FLEET} processes, {C_ROUNDS} rounds "
          f"{[round(r['round_s'], 1) for r in ck.metrics]} s, MB down per round "
          f"{[round(r['bytes_down'] / 1e6, 2) for r in ck.metrics]}, wall {time.monotonic() - t0:.0f} s")


# --- distributed DP inside SecAgg+ at fleet size --------------------------------------------------

D_ROUNDS, D_Z, D_DELTA = 2, 0.5, 1e-5


@pytest.mark.slow
def test_hundred_client_processes_dp_secagg_released_sum_has_the_survivors_noise(tmp_path):
    """--secagg --dp distributed --noise-multiplier 0.5, 100 devices in each of 2 rounds (a sparse
    graph): the released sum minus the 100 survivors' noise-free vectors (numpy, from each device's
    delta, the round's rotation seed captured on the wire and its rounding stream) has zero mean and
    the variance of 100 noise shares -- and not that of min_survivors shares."""
    pytest.importorskip("cryptography")
    pytest.importorskip("dp_accounting")
    pytest.importorskip("scipy.linalg")
    from fedtiny.net import secagg_round as sr
    from fedtiny.privacy import dp_secagg
    from test_dp_secagg_net import SetupCapture, released_and_clean
    from test_secagg_net import run_fleet
    t0 = time.monotonic()
    fleet = Fleet(tmp_path, FLEET)
    cap = SetupCapture(fleet.keys)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, FLEET, D_ROUNDS, tap=cap, fleet=fleet, timeout=900,
                                             cfg_kw=dict(dp="distributed", noise_multiplier=D_Z, delta=D_DELTA,
                                                         round_timeout=300.0, secagg_stage_timeout=90.0))
    run_s = time.monotonic() - t0
    assert codes == [0] * FLEET, logs[-3000:]
    ck = state.load(cfg.state)
    assert ck.round == D_ROUNDS
    residuals, expected_var = [], []
    for r in range(1, D_ROUNDS + 1):
        row = ck.metrics[r - 1]
        assert row["secagg_outcome"] == "applied" and row["survivors"] == FLEET, row
        setup = sr.parse_setup(r, cap.setups[r])
        w0 = cap.model(r)
        p = dp_secagg.params(w0.size, cfg.clip_norm, setup.dp_z, setup.min_survivors, FLEET, setup.dp_bits)
        assert p.devices == setup.min_survivors < FLEET and row["noise_multiplier"] == p.z_effective >= D_Z
        w1 = cap.model(r + 1) if r < D_ROUNDS else ck.weights
        released, clean = released_and_clean(fleet, p, setup, w0, w1, r, range(FLEET))
        residuals.append(released - clean)
        expected_var.append(p.gamma ** 2 * FLEET * p.sigma2)
    res = np.concatenate(residuals)
    var, n = float(np.mean(expected_var)), res.size
    assert abs(res.mean()) < 5 * np.sqrt(var / n), (res.mean(), var)
    assert abs(res.var() / var - 1) < 5 * np.sqrt(2 / n), (res.var(), var)
    assert abs(res.var() / (p.gamma ** 2 * p.devices * p.sigma2) - 1) > 5 * np.sqrt(2 / n)   # min_survivors' noise: wrong
    print(f"\ndp-secagg: {FLEET} processes, {D_ROUNDS} rounds {[round(r['round_s'], 1) for r in ck.metrics]} s, "
          f"min_survivors {p.devices}, bits {p.bits}, residual variance / expected {res.var() / var:.3f} "
          f"(tolerance {5 * np.sqrt(2 / n):.3f}), epsilon {ck.metrics[-1]['epsilon']:.2f}, run {run_s:.0f} s")
