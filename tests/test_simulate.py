"""`fedtiny simulate` on the bundled digits: accuracy reached, codecs agree, reproducible from the
seed, the FedAvg step equals a float64 oracle, aggregator memory flat in the number of clients,
and the command line's outputs and errors."""
import csv
import json
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest

from fedtiny import cli, codec, datasets, simulate, train
from fedtiny import model as model_mod
from fedtiny.simulate import SimConfig

DIGITS = dict(dataset="digits", model="mlp:64-32-10", clients=20, fraction=0.5, epochs=2, batch=10, lr=0.2)


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


def _run(digits, **kw):
    return simulate.run(SimConfig(**{**DIGITS, **kw}), data=digits)


@pytest.fixture(scope="module")
def f32_and_int8(digits):
    return _run(digits, rounds=15, codec="float32"), _run(digits, rounds=15, codec="int8")


def test_short_simulation_reaches_stated_accuracy(f32_and_int8):
    f32, int8 = f32_and_int8
    assert f32.summary["final_test_acc"] >= 0.90
    assert int8.summary["final_test_acc"] >= 0.90
    assert f32.rounds[0]["test_acc"] < 0.8  # it learned during the run, it did not start there
    assert 0.8 <= f32.rounds[-1]["fed_acc"] <= 1.0


def test_int8_and_float32_codecs_end_close(f32_and_int8, digits):
    f32, int8 = f32_and_int8
    assert abs(f32.summary["final_test_acc"] - int8.summary["final_test_acc"]) <= 0.03
    n = f32.summary["n_params"]
    updates = sum(r["clients"] for r in f32.rounds)
    assert f32.summary["upload_mb"] * 1e6 == updates * 4 * n
    assert int8.summary["upload_mb"] * 1e6 == updates * codec.wire_size(n)
    for name in ("int8-stochastic", "int8-ef"):
        other = _run(digits, rounds=15, codec=name)
        assert abs(f32.summary["final_test_acc"] - other.summary["final_test_acc"]) <= 0.03, name
    assert other.summary["client_residual_bytes"] == 20 * 4 * n  # int8-ef: one residual per client, client side


def test_run_is_reproducible_from_its_seed(digits):
    a = _run(digits, rounds=3, codec="int8-stochastic", seed=5)
    b = _run(digits, rounds=3, codec="int8-stochastic", seed=5)
    c = _run(digits, rounds=3, codec="int8-stochastic", seed=6)
    np.testing.assert_array_equal(a.params, b.params)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(a.rounds) == strip(b.rounds)
    assert not np.array_equal(a.params, c.params)


def test_one_round_equals_fedavg_oracle(digits):
    """The simulation's FedAvg step against local_sgd per client and a float64 weighted mean."""
    cfg = SimConfig(**{**DIGITS, "clients": 4, "fraction": 1.0, "partition": "dirichlet", "alpha": 1.0}, rounds=1)
    res = simulate.run(cfg, data=digits)
    model = model_mod.build(cfg.model)
    w0 = model.init(cfg.seed)
    splits = datasets.partition(digits.y_train, 4, "dirichlet", alpha=1.0, holdout=cfg.holdout, seed=cfg.seed)
    sizes = np.array([s.n_samples for s in splits], dtype=np.float64)
    assert len(set(sizes)) > 1  # unequal n_k, so the weighting matters
    deltas = []
    for k, s in enumerate(splits):
        w = w0.copy()
        train.local_sgd(model, w, digits.x_train[s.train], digits.y_train[s.train], epochs=cfg.epochs,
                        batch_size=cfg.batch, lr=cfg.lr, seed=simulate.derive_seed(cfg.seed, 1, k, 1))
        deltas.append(w.astype(np.float64) - w0)
    deltas = np.array(deltas)
    oracle = w0 + (sizes[:, None] * deltas).sum(0) / sizes.sum()
    np.testing.assert_allclose(res.params, oracle, rtol=0, atol=2e-6)
    assert np.abs(res.params - (w0 + deltas.mean(0))).max() > 1e-3  # an unweighted mean would fail


def test_aggregator_memory_does_not_grow_with_clients():
    data = datasets.load("fashion-mnist") if os.path.isdir(datasets.DEFAULT_DIRS["fashion-mnist"]) else None
    if data is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    traced = {}
    for k in (10, 1000):
        res = simulate.run(SimConfig(dataset="fashion-mnist", model="mlp:784-16-10", clients=k, fraction=1.0,
                                     rounds=1, codec="int8", trace_memory=True, test_limit=100), data=data)
        traced[k] = res.summary["aggregator_traced_bytes_max"]
        state = res.summary["aggregator_state_bytes"]
        assert traced[k] >= 4 * res.summary["n_params"]  # the accumulator itself is seen
    # 100x the clients: the model-sized state is the same; what grows is who-answered bookkeeping
    per_client = (traced[1000] - traced[10]) / 990
    assert per_client < 200, traced
    assert traced[1000] < state + 200 * 1000


def test_hetero_fednova_and_personalization(digits):
    res = _run(digits, rounds=3, hetero=True, normalize="fednova", personalize=1, personalize_clients=5)
    steps = [r["local_steps"] for r in res.rounds]
    full = _run(digits, rounds=3)
    assert all(s < f for s, f in zip(steps, [r["local_steps"] for r in full.rounds]))
    p = res.personalization
    assert len(p["clients"]) == len(p["before"]) == len(p["after"]) == 5
    assert all(0 <= a <= 1 for a in p["before"] + p["after"])
    assert p["before_summary"]["p10"] <= p["before_summary"]["median"] <= p["before_summary"]["p90"]


@pytest.mark.parametrize("opt,extra", [("fedavgm", dict(server_lr=0.5, server_momentum=0.5)),
                                       ("fedadam", dict(server_lr=0.01)), ("fedavg", dict(prox_mu=0.01))])
def test_server_optimizers_and_fedprox_learn(digits, opt, extra):
    res = _run(digits, rounds=8, server_opt=opt, **extra)
    assert res.summary["final_test_acc"] >= 0.75


def _cli(*args, cwd=None):
    # Run outside the checkout: from its root, `-m` would import the uncompiled source tree.
    return subprocess.run([sys.executable, "-m", "fedtiny.cli", *args], capture_output=True, text=True,
                          cwd=cwd or tempfile.gettempdir())


def test_cli_writes_outputs(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "10",
                   "--fraction", "0.5", "--rounds", "2", "--lr", "0.2", "--quiet", "--out", str(out),
                   "--personalize", "1", "--personalize-clients", "3"])
    assert rc == 0
    rows = (out / "rounds.csv").read_text().splitlines()
    assert rows[0].startswith("round,clients,samples") and len(rows) == 3
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["clients"] == 10 and len(result["rounds"]) == 2
    assert np.load(out / "params.npy").shape == (64 * 32 + 32 + 32 * 10 + 10,)
    assert (out / "personalization.csv").exists()
    pytest.importorskip("matplotlib")
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_so_in_one_line(monkeypatch, tmp_path, digits):
    res = _run(digits, rounds=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    lines = []
    assert simulate.plot(res, str(tmp_path / "a.png"), log=lines.append) is None
    assert len(lines) == 1 and "matplotlib" in lines[0] and not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("args,needle", [
    (["--clients", "0"], "--clients must be >= 1"),
    (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
    (["--codec", "int3"], "invalid choice: 'int3'"),
    (["--down-codec", "int2"], "invalid choice: 'int2'"),
    (["--rounds", "x"], "invalid int value"),
    (["--server-opt", "fedavg", "--beta1", "0.9"], "--beta1 does not apply to --server-opt fedavg"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent-dir"], "apt-get install dataset-fashion-mnist"),
    (["--model", "2nn"], "use --model mlp:64-32-10"),
    (["--model", "cnn9"], "cnn9"),
])
def test_cli_bad_arguments_one_line_exit_2(args, needle):
    base = ["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--rounds", "1", "--quiet"]
    p = _cli(*base, *args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    rows = [{"round": r, "test_acc": 0.5, "cum_upload_mb": 1.0 * r, "elapsed_wall_s": 0.5 * r} for r in (1, 2, 3, 4)]
    plain, tty = io.StringIO(), Tty()
    for stream in (plain, tty):
        bar = simulate.Progress(4, stream=stream)
        for row in rows:
            bar.update(row)
    # 2 rounds per second: after round 1 of 4, 3 rounds are left, 1.5 s
    assert plain.getvalue().splitlines() == [
        "round 1/4  test acc 0.5000  up 1.0 MB  0.5 s  2.00 rounds/s  2 s left",
        "round 2/4  test acc 0.5000  up 2.0 MB  1.0 s  2.00 rounds/s  1 s left",
        "round 3/4  test acc 0.5000  up 3.0 MB  1.5 s  2.00 rounds/s  0 s left",
        "round 4/4  test acc 0.5000  up 4.0 MB  2.0 s  2.00 rounds/s  0 s left"]
    assert tty.getvalue().count("\r") == 4 and "[" + "#" * 24 + "]" in tty.getvalue() and tty.getvalue().endswith("\n")


def _strict_json(text):
    def refuse(token):
        raise ValueError(f"not JSON: bare {token}")
    return json.loads(text, parse_constant=refuse)


def test_holdout_0_writes_valid_json_and_says_federated_is_not_measured(tmp_path):
    out = tmp_path / "run"
    p = _cli("simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "5", "--fraction", "1",
             "--rounds", "2", "--lr", "0.2", "--holdout", "0", "--quiet", "--out", str(out))
    assert p.returncode == 0, p.stderr
    result = _strict_json((out / "result.json").read_text())
    assert result["summary"]["final_fed_acc"] is None and all(r["fed_acc"] is None for r in result["rounds"])
    assert 0 < result["summary"]["final_test_acc"] <= 1
    assert "federated n/a (--holdout 0)" in p.stdout


def test_rounds_csv_has_per_round_wall_and_cpu_seconds(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "4", "--rounds", "3",
                     "--fraction", "1", "--quiet", "--out", str(out)]) == 0
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    walls = [float(r["round_wall_s"]) for r in rows]
    elapsed = [float(r["elapsed_wall_s"]) for r in rows]
    assert all(float(r["round_cpu_s"]) > 0 for r in rows)
    # elapsed runs from the first round's start; each round is timed from its own start
    assert all(e >= sum(walls[:i + 1]) - 1e-9 for i, e in enumerate(elapsed))
    assert all(elapsed[i] - elapsed[i - 1] >= walls[i] - 1e-9 for i in range(1, len(rows)))
    assert "wall_s" not in rows[0] and "train_s" not in rows[0]


@pytest.mark.parametrize("command,option,default", [("simulate", "--rounds", "50"), ("simulate", "--epochs", "1"),
                                                    ("simulate", "--batch", "10"), ("simulate", "--lr", "0.05"),
                                                    ("simulate", "--momentum", "0.0"), ("simulate", "--holdout", "0.1"),
                                                    ("aggregate", "--rounds", "10"), ("aggregate", "--lr", "0.05")])
def test_help_shows_every_default(command, option, default):
    text = cli.build_parser(command)._subparsers._group_actions[0].choices[command].format_help()
    line = " ".join(text.split())   # argparse wraps lines
    after = line.split(f" {option} {option.lstrip('-').upper().replace('-', '_')} ", 1)[1]
    assert f"(default {default})" in after.split(" --", 1)[0], after[:120]
