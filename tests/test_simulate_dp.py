"""`fedtiny simulate` with differential privacy and clipping on the bundled digits: the epsilon
column is the accountant's, the modes learn, one hostile device stays bounded, bad flags exit 2."""
import csv
import json

import numpy as np
import pytest

from fedtiny import cli, datasets, simulate
from fedtiny.simulate import SimConfig

pytest.importorskip("dp_accounting")
from fedtiny.privacy import accounting  # noqa: E402

BASE = dict(dataset="digits", model="mlp:64-32-10", clients=40, fraction=0.25, epochs=2, batch=10, lr=0.2)


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


def _run(digits, attack=None, **kw):
    return simulate.run(SimConfig(**{**BASE, **kw}), data=digits, attack=attack)


def test_central_epsilon_column_is_the_accountant_after_every_round(digits):
    res = _run(digits, rounds=6, dp="central", clip_norm=1.0, noise_multiplier=1.0, dp_test_seed=1)
    s = accounting.Sampling("poisson", 40, 10)
    for row in res.rounds:
        assert row["epsilon"] == pytest.approx(accounting.epsilon(s, 1.0, row["round"], 1e-5), rel=1e-12)
    assert res.summary["epsilon"] == res.rounds[-1]["epsilon"]
    assert res.summary["sampling"] == "poisson"
    # Poisson sampling really is Poisson: the round sizes vary around q N = 10
    sizes = [row["clients"] for row in res.rounds]
    assert len(set(sizes)) > 1 and 4 <= np.mean(sizes) <= 16


def test_target_epsilon_calibrates_z_for_the_planned_rounds(digits):
    res = _run(digits, rounds=5, dp="central", clip_norm=1.0, target_epsilon=3.0, dp_sampling="fixed", dp_test_seed=2)
    eps = [row["epsilon"] for row in res.rounds]
    assert eps[-1] <= 3.0 and eps[-1] > 2.95
    assert all(a < b for a, b in zip(eps, eps[1:]))
    assert res.summary["noise_multiplier"] == pytest.approx(
        accounting.calibrate(accounting.Sampling("fixed", 40, 10), 3.0, 5, 1e-5))
    assert all(row["clients"] == 10 for row in res.rounds)


def test_dp_modes_learn_and_noise_costs_accuracy(digits):
    plain = _run(digits, rounds=12, clip_norm=2.0)
    central = _run(digits, rounds=12, dp="central", clip_norm=2.0, noise_multiplier=0.3, dp_test_seed=3)
    loud = _run(digits, rounds=12, dp="central", clip_norm=2.0, noise_multiplier=30.0, dp_test_seed=3)
    distributed = _run(digits, rounds=12, dp="distributed", clip_norm=2.0, noise_multiplier=0.3, dp_sampling="fixed",
                       dp_test_seed=3)
    assert plain.summary["final_test_acc"] > 0.85
    assert central.summary["final_test_acc"] > 0.75
    assert distributed.summary["final_test_acc"] > 0.75
    assert loud.summary["final_test_acc"] < central.summary["final_test_acc"] - 0.2
    assert distributed.summary["dp_bits"] <= 32 and distributed.rounds[-1]["epsilon"] > 0


def test_adaptive_clip_moves_the_bound(digits):
    res = _run(digits, rounds=8, dp="central", clip_norm=0.01, adaptive_clip=0.5, noise_multiplier=0.5, dp_test_seed=4)
    bounds = [row["clip_norm"] for row in res.rounds]
    assert bounds[0] == 0.01 and bounds[-1] > 0.01 * 2  # all updates were clipped: the bound grows
    assert res.summary["noise_multiplier_updates"] > res.summary["noise_multiplier"]


@pytest.mark.slow
def test_one_bad_device_is_bounded_by_clipping(digits):
    # one device (0, sampled in most rounds at fraction 0.5) sends its update sign-flipped x100
    kw = dict(rounds=15, clients=20, fraction=0.5, clip_norm=1.0, seed=1)
    honest = _run(digits, **kw)
    attacked = _run(digits, attack=(0, -100.0), **kw)
    assert abs(attacked.summary["final_test_acc"] - honest.summary["final_test_acc"]) <= 0.01
    assert any(row["clipped"] >= 1 for row in attacked.rounds)
    # the oracle that the attack is real: without clipping it wrecks the model
    unclipped = _run(digits, attack=(0, -100.0), rounds=15, clients=20, fraction=0.5, seed=1)
    assert unclipped.summary["final_test_acc"] < honest.summary["final_test_acc"] - 0.3


def test_cli_writes_epsilon(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "20",
                   "--fraction", "0.5", "--rounds", "2", "--quiet", "--dp", "central", "--clip-norm", "1",
                   "--noise-multiplier", "1.5", "--out", str(out)])
    assert rc == 0
    with open(out / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epsilon"]) for r in rows] == pytest.approx(
        [accounting.epsilon(accounting.Sampling("poisson", 20, 10), 1.5, t, 1e-5) for t in (1, 2)])
    summary = json.loads((out / "result.json").read_text())["summary"]
    assert summary["epsilon"] == pytest.approx(float(rows[-1]["epsilon"]))


@pytest.mark.parametrize("args,needle", [
    (["--dp", "central"], "--clip-norm"),
    (["--dp", "central", "--clip-norm", "1"], "exactly one of --noise-multiplier"),
    (["--dp", "central", "--clip-norm", "1", "--noise-multiplier", "1", "--target-epsilon", "2"], "exactly one of"),
    (["--dp", "central", "--clip-norm", "0", "--noise-multiplier", "1"], "--clip-norm must be a positive"),
    (["--dp", "central", "--clip-norm", "1", "--noise-multiplier", "-1"], "--noise-multiplier"),
    (["--dp", "central", "--clip-norm", "1", "--noise-multiplier", "1", "--delta", "2"], "--delta"),
    (["--noise-multiplier", "1"], "need --dp"),
    (["--dp", "distributed", "--clip-norm", "1", "--noise-multiplier", "1", "--codec", "int8"], "drop --codec"),
    (["--dp", "distributed", "--clip-norm", "1", "--noise-multiplier", "1", "--adaptive-clip", "0.5"], "central only"),
    (["--dp", "central", "--clip-norm", "1", "--noise-multiplier", "1", "--adaptive-clip", "1.5"], "quantile"),
    (["--dp", "laplace"], "invalid choice"),
    (["--secagg", "--dp", "central", "--clip-norm", "1", "--noise-multiplier", "1"], "does not combine with --secagg"),
])
def test_cli_bad_dp_flags_one_line_exit_2(capsys, args, needle):
    try:
        rc = cli.main(["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "20",
                       "--rounds", "1", "--quiet"] + args)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_privacy_plan_command(capsys):
    assert cli.main(["privacy", "--target-epsilon", "4", "--rounds", "100"]) == 0
    out = capsys.readouterr().out
    z = accounting.calibrate(accounting.Sampling("poisson", 1000, 100), 4.0, 100, 1e-5)
    assert f"z = {z:.4f}" in out and "100: 4.000" in out
    assert cli.main(["privacy", "--dp", "distributed", "--noise-multiplier", "1", "--params", "1000"]) == 0
    assert "modulus 2^" in capsys.readouterr().out
