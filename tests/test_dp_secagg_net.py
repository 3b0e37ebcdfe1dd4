"""Distributed DP inside SecAgg+ rounds over the network: `fedtiny aggregate --secagg --dp distributed`
with real `fedtiny client` processes on 127.0.0.1 (fedtiny.privacy.dp_secagg, docs/privacy.md).

Oracles: each device's noise-free DDGauss vector (clip, rotation, conditional randomized rounding)
recomputed here in numpy from its delta (trained as the client trains it), the round's public
rotation seed (its session bytes, captured on the wire) and its rounding stream (derived from the
run's seed, as the test seed); the released model minus the start model minus the survivors'
noise-free mean must then be the survivors' noise alone: zero mean, variance gamma^2 n sigma^2
(n survivors' shares) per coordinate. epsilon: dp-accounting's RDP accountant composed directly.
"""
import math
import subprocess
import sys

import numpy as np
import pytest

from fedtiny.net import state, wire
from fedtiny.net import secagg_round as sr
from fedtiny.privacy import ddgauss, dp_secagg
from fedtiny.privacy import grid as gridmod
from netutil import Fleet
from test_secagg_net import MaskedCapture, local_delta, run_fleet

pytest.importorskip("cryptography")
pytest.importorskip("dp_accounting")
scipy_linalg = pytest.importorskip("scipy.linalg")

CLIENTS, ROUNDS, Z, DELTA = 6, 3, 0.5, 1e-5


class SetupCapture(MaskedCapture):
    """The model of each round and each round's SETUP (its session bytes are the rotation seed)."""

    def __init__(self, device_keys):
        super().__init__(device_keys)
        self.setups: dict[int, bytes] = {}

    def __call__(self, direction, data):
        super().__call__(direction, data)
        with self.lock:
            f = self.keys.decode(data)
            if f is not None and direction == "down" and f.type == wire.MsgType.SECAGG_SETUP and f.chunk_index == 0:
                self.setups.setdefault(f.round, bytes(f.payload))


def oracle_rounded(p: ddgauss.Params, delta: np.ndarray, session: bytes, round_key: bytes) -> np.ndarray:
    """One device's noise-free integer vector in numpy: clip, pad, signs D, the Hadamard matrix
    (scipy) / sqrt(P), / gamma, randomized rounding redrawn until the norm is <= Delta_2."""
    x = delta.astype(np.float64)
    norm = math.sqrt(float(np.dot(x, x)))
    x = x * min(1.0, p.clip / norm) if norm > 0 else x
    y = np.zeros(p.padded)
    y[:x.size] = x
    signs = np.random.default_rng([int.from_bytes(session, "little"), 0xDD6A]).integers(0, 2, p.padded) * 2 - 1
    h = scipy_linalg.hadamard(p.padded, dtype=np.int8).astype(np.float64)
    t = h @ (signs * y) / math.sqrt(p.padded) / p.gamma
    rng = np.random.default_rng(np.frombuffer(round_key, dtype="<u4").astype(np.uint64))
    fl = np.floor(t)
    while True:
        r = fl + (rng.random(t.size) < t - fl)
        if float(np.dot(r, r)) <= p.delta2 ** 2:
            return r, signs, h


def released_and_clean(fleet, p, setup, w0, w1, r, survivors):
    """(the released sum of the round, from the model's step; the survivors' noise-free sum from the
    oracle), both in model units, float64."""
    total = 0
    for k in survivors:
        q, signs, h = oracle_rounded(p, local_delta(fleet, w0, r, k), setup.session, gridmod.derived_round_key(0, r, k))
        total = total + q
    clean = (signs * (h @ total) / math.sqrt(p.padded))[:p.dim] * p.gamma
    released = (w1.astype(np.float64) - w0.astype(np.float64)) * len(survivors)   # the mean divides by survivors
    return released, clean


def test_six_clients_the_released_sum_carries_the_survivors_discrete_gaussian_noise(tmp_path):
    fleet = Fleet(tmp_path, CLIENTS)
    cap = SetupCapture(fleet.keys)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, CLIENTS, ROUNDS, tap=cap, fleet=fleet, timeout=150,
                                             cfg_kw=dict(dp="distributed", noise_multiplier=Z, delta=DELTA))
    assert codes == [0] * CLIENTS, logs
    ck = state.load(cfg.state)
    assert ck.round == ROUNDS
    residuals, expected_var = [], []
    import dp_accounting
    direct = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for r in range(1, ROUNDS + 1):
        row = ck.metrics[r - 1]
        assert row["secagg_outcome"] == "applied" and row["survivors"] == CLIENTS, row
        setup = sr.parse_setup(r, cap.setups[r])              # one frame: 56 + 6 x 4 bytes
        assert setup.dp_bits == row["dp_bits"] and setup.dp_z == dp_secagg.z_on_wire(Z)
        w0 = cap.model(r)
        p = dp_secagg.params(w0.size, cfg.clip_norm, setup.dp_z, setup.min_survivors, CLIENTS, setup.dp_bits)
        assert p.devices == setup.min_survivors < CLIENTS     # noise sized for the fewest survivors
        assert cap.vector(r, 0).nbytes == p.padded * (2 if p.bits <= 16 else 4)   # 16-bit words up to 2^16
        w1 = cap.model(r + 1) if r < ROUNDS else ck.weights
        released, clean = released_and_clean(fleet, p, setup, w0, w1, r, range(CLIENTS))
        residuals.append(released - clean)
        expected_var.append(p.gamma ** 2 * CLIENTS * p.sigma2)     # the survivors' shares
        direct.compose(dp_accounting.SampledWithoutReplacementDpEvent(
            CLIENTS, CLIENTS, dp_accounting.GaussianDpEvent(p.z_effective / 2)))
        assert row["noise_multiplier"] == p.z_effective >= Z
        assert row["epsilon"] == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    res = np.concatenate(residuals)
    var = float(np.mean(expected_var))
    n = res.size
    assert abs(res.mean()) < 5 * math.sqrt(var / n), (res.mean(), var)
    assert abs(res.var() / var - 1) < 5 * math.sqrt(2 / n), (res.var(), var)   # ~8% at 3 x 2410 values
    # a wrong noise level is caught: the shares of only min_survivors devices would be 4/6 of it
    assert abs(res.var() / (p.gamma ** 2 * p.devices * p.sigma2) - 1) > 5 * math.sqrt(2 / n)


def test_a_dropout_after_its_shares_the_sum_carries_the_five_survivors_noise(tmp_path):
    """Device 2 is killed after its SHARES (its pairwise masks are rebuilt, its vector never arrives):
    5 survivors >= min_survivors 4, the round is released with their 5 noise shares, accounted."""
    fleet = Fleet(tmp_path, CLIENTS)
    cap = SetupCapture(fleet.keys)
    fleet, cfg, agg, codes, logs = run_fleet(tmp_path, CLIENTS, 1, tap=cap, fleet=fleet, kill={2: "shares"},
                                             cfg_kw=dict(dp="distributed", noise_multiplier=Z, delta=DELTA,
                                                         round_timeout=12.0))
    ck = state.load(cfg.state)
    row = ck.metrics[0]
    assert row["secagg_outcome"] == "applied" and row["survivors"] == 5, row
    setup = sr.parse_setup(1, cap.setups[1])
    w0 = cap.model(1)
    p = dp_secagg.params(w0.size, cfg.clip_norm, setup.dp_z, setup.min_survivors, CLIENTS, setup.dp_bits)
    survivors = [0, 1, 3, 4, 5]
    released, clean = released_and_clean(fleet, p, setup, w0, ck.weights, 1, survivors)
    res = released - clean
    var = p.gamma ** 2 * 5 * p.sigma2
    assert abs(res.mean()) < 5 * math.sqrt(var / res.size)
    assert abs(res.var() / var - 1) < 5 * math.sqrt(2 / res.size), (res.var(), var)
    assert row["epsilon"] > 0 and row["dp_released"]


def test_target_epsilon_stops_before_overspending_and_a_restart_replays_epsilon():
    from types import SimpleNamespace
    from fedtiny.privacy import aggregator_dp, secagg
    cfg = SimpleNamespace(dp="distributed", secagg=True, secagg_bits=None, noise_multiplier=0.8, target_epsilon=None,
                          adaptive_clip=None, clip_norm=1.0, delta=1e-5, fraction=0.5, min_clients=6, rounds=10,
                          max_samples=None, secagg_config=lambda: secagg.Config(clip=1.0))
    dp = aggregator_dp.create(cfg, 20, 2410)
    rows = []
    for _ in range(3):
        assert dp.open_round(20, 10)
        rows.append(dp.close_round(True, 10, 0))
    cfg.target_epsilon = (rows[1]["epsilon"] + rows[2]["epsilon"]) / 2
    again = aggregator_dp.create(cfg, 20, 2410)
    again.resume(rows[:2])
    assert again.accountant.epsilon() == pytest.approx(rows[1]["epsilon"], rel=1e-12)
    assert not again.open_round(20, 10) and "privacy budget spent" in again.spent_detail
    p = dp.round_params                                  # 10 selected: k = 9, t = 5, min_survivors 6
    assert (p.devices, p.max_devices) == (6, 10) and rows[0]["noise_multiplier"] == p.z_effective >= 0.8


@pytest.mark.parametrize("args, needle", [
    (["--dp", "distributed", "--noise-multiplier", "1"], "--dp distributed needs --secagg"),
    (["--dp", "central", "--noise-multiplier", "1", "--secagg"], "--dp central does not combine with --secagg"),
    (["--dp", "distributed", "--secagg"], "needs --noise-multiplier Z, --target-epsilon E"),
    (["--dp", "distributed", "--secagg", "--noise-multiplier", "1", "--secagg-bits", "16"], "--secagg-bits does not apply"),
    (["--dp", "distributed", "--secagg", "--noise-multiplier", "1", "--adaptive-clip", "0.5"], "--adaptive-clip works"),
])
def test_remaining_refusals_are_one_line_exit_2(tmp_path, args, needle):
    fleet = Fleet(tmp_path, 1)
    res = subprocess.run([sys.executable, "-m", "fedtiny.cli", "aggregate", "--keys", fleet.keyfile, "--state",
                          str(tmp_path / "st"), "--listen", "127.0.0.1:0", "--clip-norm", "1", *args],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "st").exists()


def test_simulate_still_refuses_dp_with_secagg_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fedtiny.cli", "simulate", "--dataset", "digits", "--secagg",
                          "--dp", "distributed", "--noise-multiplier", "1", "--clip-norm", "1", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dp does not combine with --secagg in simulate" in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_setup_carries_bits_and_z_and_refuses_bad_ones():
    from fedtiny.privacy import secagg
    s = secagg.Setup.create(4, [1, 2, 3], secagg.Config(clip=1.0, bits=16))
    import dataclasses
    s = dataclasses.replace(s, dp_bits=13, dp_z=dp_secagg.z_on_wire(0.7))
    back = sr.parse_setup(4, sr.pack_setup(s))
    assert (back.dp_bits, back.dp_z) == (13, s.dp_z) and back.grid == s.grid
    plain = sr.parse_setup(4, sr.pack_setup(dataclasses.replace(s, dp_bits=0, dp_z=0.0)))
    assert plain.dp_bits == 0
    with pytest.raises(sr.PayloadError, match="13-bit modulus in 32-bit words"):
        sr.parse_setup(4, sr.pack_setup(dataclasses.replace(s, grid=gridmod.Grid(1.0, 32, 3))))
    for bits, z in ((1, 0.7), (33, 0.7), (13, 0.0), (13, -1.0), (13, float("nan"))):
        with pytest.raises(sr.PayloadError, match="distributed DP"):
            sr.parse_setup(4, sr.pack_setup(dataclasses.replace(s, dp_bits=bits, dp_z=z)))
