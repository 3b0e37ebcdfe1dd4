"""`fedtiny simulate` on the bundled digits: accuracy reached, codecs agree, reproducible from the
seed, the FedAvg step equals a float64 oracle, aggregator memory flat in the number of clients,
and the command line's outputs and errors."""
import csv
import json
import math
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest

from fedtiny import cli, codec, datasets, rounds, simulate, train
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
    assert rows[0].startswith("round,sim_time_s,clients,samples") and len(rows) == 3
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
    (["--buffer", "5"], "--buffer needs --mode async"),
    (["--mode", "async", "--deadline", "10"], "--deadline applies to --mode sync"),
    (["--mode", "async", "--buffer", "0"], "--buffer must be >= 1"),
    (["--mode", "async", "--concurrency", "0"], "--concurrency must be in [1, --clients 100]"),
    (["--mode", "async", "--concurrency", "101"], "--concurrency must be in [1, --clients 100]"),
    (["--mode", "async", "--max-staleness", "-1"], "--max-staleness must be >= 0"),
    (["--mode", "async", "--staleness", "linear"], "invalid choice: 'linear'"),
    (["--mode", "async", "--staleness-exponent", "-1"], "exponent must be a number >= 0"),
    (["--mode", "async", "--staleness", "const", "--hinge-at", "3"], "--hinge-at and --hinge-slope apply to --staleness hinge"),
    (["--mode", "async", "--secagg"], "--secagg needs --mode sync"),
    (["--mode", "asynch"], "invalid choice: 'asynch'"),
    (["--deadline", "0"], "--deadline must be a positive number"),
    (["--speed-spread", "0.5"], "--speed-spread must be >= 1"),
    (["--speed-min", "-1"], "--speed-min must be a positive number"),
    (["--speed-by", "speed"], "invalid choice: 'speed'"),
    (["--task-timeout", "30"], "--task-timeout needs --mode async"),
    (["--mode", "async", "--task-timeout", "0"], "--task-timeout must be a positive number of simulated seconds"),
    (["--mode", "async", "--task-timeout", "inf"], "--task-timeout must be a positive number of simulated seconds"),
    (["--iid-share", "1.5"], "--iid-share must be a share in [0, 1]"),
    (["--iid-share", "0.5"], "--iid-share applies to --partition shards or dirichlet"),
    (["--iid-share", "-0.1"], "--iid-share must be a share in [0, 1]"),
    (["--iid-share", "nan"], "--iid-share must be a share in [0, 1]"),
    (["--availability", "markov", "--off-mean", "0"], "--off-mean must be a positive number"),
    (["--availability-csv", "/nonexistent-trace.csv"], "No such file or directory: /nonexistent-trace.csv"),
    (["--dp", "central", "--clip-norm", "1", "--noise-multiplier", "1", "--mode", "async"], "--dp needs --mode sync"),
    (["--dp", "central", "--clip-norm", "1", "--noise-multiplier", "1", "--deadline", "9"], "--dp needs devices that are always"),
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


# --- the clock, availability and FedBuff (--mode async) --------------------------------------

FLEET = dict(speed_spread=10.0, availability="markov", on_mean=40.0, off_mean=20.0)


def test_async_run_learns_reproducibly_on_the_clock(digits):
    cfg = dict(rounds=25, mode="async", buffer=4, concurrency=8, **FLEET)
    a, b = _run(digits, **cfg), _run(digits, **cfg)
    assert np.array_equal(a.params, b.params)
    assert a.summary["final_test_acc"] >= 0.85 and a.rounds[0]["test_acc"] < 0.8
    times = [r["sim_time_s"] for r in a.rounds]
    assert all(t1 > t0 for t0, t1 in zip(times, times[1:]))
    assert all(r["clients"] == 4 for r in a.rounds)                       # K arrivals per server step
    assert max(r["staleness_max"] for r in a.rounds) >= 1                 # concurrency > K: some are stale
    assert all(r["staleness_max"] <= rounds.DEFAULT_MAX_STALENESS for r in a.rounds)
    assert a.summary["sim_time_s"] == times[-1]


def test_async_max_staleness_0_rejects_and_still_progresses(digits):
    res = _run(digits, rounds=10, mode="async", buffer=2, concurrency=10, max_staleness=0, **FLEET)
    assert sum(r["rejected_stale"] for r in res.rounds) > 0
    assert all(r["staleness_max"] == 0 for r in res.rounds) and len(res.rounds) == 10


def test_sync_deadline_drops_stragglers_and_a_round_nobody_makes_is_abandoned(digits):
    base = dict(rounds=4, **FLEET)
    # >= 10 local steps at <= 10 steps/s: a 0.5 s deadline nobody makes; the model stays where it started
    none = _run(digits, deadline=0.5, **base)
    init = model_mod.build(DIGITS["model"]).init(0, "fedtiny")
    assert np.array_equal(none.params, init)
    assert all(r["clients"] == 0 and r["stragglers"] > 0 for r in none.rounds)
    assert none.rounds[1]["sim_time_s"] - none.rounds[0]["sim_time_s"] >= 0.5
    some = _run(digits, deadline=5.0, **base)
    assert any(0 < r["clients"] for r in some.rounds) and any(r["stragglers"] > 0 for r in some.rounds)
    everyone = _run(digits, **base)                       # no deadline: waits for the slowest, no stragglers
    assert all(r["stragglers"] == 0 for r in everyone.rounds)
    assert everyone.rounds[-1]["sim_time_s"] > some.rounds[-1]["sim_time_s"]


def test_sync_always_on_equal_speeds_is_the_clockless_run(digits):
    # one speed, always on: the same draws and the same order as before the clock; each round
    # lasts E * ceil(n_k / B) / speed seconds
    res = _run(digits, rounds=3, speed_min=2.0)
    steps = DIGITS["epochs"] * max(math.ceil(n / DIGITS["batch"]) for n in [_train_size(digits)])
    assert [r["sim_time_s"] for r in res.rounds] == pytest.approx([steps / 2.0 * i for i in (1, 2, 3)], rel=0.2)


def _train_size(digits):
    split = datasets.partition(digits.y_train, DIGITS["clients"], "iid", holdout=0.1, seed=0)
    return max(p.n_samples for p in split)


def test_availability_csv_drives_who_trains(tmp_path, digits):
    trace = tmp_path / "trace.csv"
    # only devices 0..3 are ever on, from t = 100 s
    trace.write_text("device,start_s,end_s\n" + "".join(f"{k},100,100000\n" for k in range(4)))
    res = _run(digits, rounds=3, mode="async", buffer=2, concurrency=4, availability_csv=str(trace))
    assert res.rounds[0]["sim_time_s"] > 100
    sync = _run(digits, rounds=2, availability_csv=str(trace))
    assert all(r["clients"] <= 4 for r in sync.rounds) and sync.rounds[0]["sim_time_s"] > 100


def test_speed_by_label_gives_the_slowest_speeds_to_the_lowest_dominant_labels(digits):
    cfg = SimConfig(**{**DIGITS, **FLEET}, partition="shards", iid_share=0.5, speed_by="label")
    splits = datasets.partition(digits.y_train, cfg.clients, "shards", iid_share=0.5, holdout=cfg.holdout, seed=cfg.seed)
    dom = datasets.dominant_labels(digits.y_train, splits)
    speeds, _ = cfg.fleet(dom)
    plain, _ = SimConfig(**{**DIGITS, **FLEET}).fleet()
    assert sorted(speeds.tolist()) == sorted(plain.tolist())
    assert all(speeds[a] <= speeds[b] for a in range(cfg.clients) for b in range(cfg.clients) if dom[a] < dom[b])
    # the run uses that fleet: another clock than the random order gives, and reproducibly
    a = _run(digits, **FLEET, partition="shards", iid_share=0.5, speed_by="label", rounds=6, mode="async", buffer=3,
             concurrency=6)
    b = _run(digits, **FLEET, partition="shards", iid_share=0.5, rounds=6, mode="async", buffer=3, concurrency=6)
    assert [r["sim_time_s"] for r in a.rounds] != [r["sim_time_s"] for r in b.rounds]
    assert np.array_equal(a.params, _run(digits, **FLEET, partition="shards", iid_share=0.5, speed_by="label",
                                         rounds=6, mode="async", buffer=3, concurrency=6).params)


def test_task_timeout_frees_the_slot_of_a_device_gone_off_mid_task(digits, tmp_path):
    # device 0 alone is on at t = 0 and takes the only slot (M = 1), goes off at t = 1 and is back at
    # t = 1000; device 1 is on from t = 0.5; device 2 never. A task of device k takes steps_k / 10 s.
    trace = tmp_path / "trace.csv"
    trace.write_text("device,start_s,end_s\n0,0,1\n0,1000,9000\n1,0.5,9000\n")
    kw = dict(clients=3, speed_min=10.0, availability_csv=str(trace), mode="async", buffer=1, concurrency=1,
              rounds=1, eval_every=1)
    splits = datasets.partition(digits.y_train, 3, "iid", holdout=0.1, seed=0)
    task = [DIGITS["epochs"] * math.ceil(s.n_samples / DIGITS["batch"]) / 10.0 for s in splits]
    assert max(task) < 20
    held = _run(digits, **kw)   # no timeout: the slot waits for device 0, which finishes after it is back
    assert held.rounds[0]["sim_time_s"] == pytest.approx(1000 + task[0] - 1)
    assert "timed_out" not in held.rounds[0]
    freed = _run(digits, **kw, task_timeout=20.0)  # dropped at t = 20; device 1 takes the slot then
    assert freed.rounds[0]["sim_time_s"] == pytest.approx(20 + task[1])
    assert freed.rounds[0]["timed_out"] == 1 and freed.rounds[0]["clients"] == 1
    # device 0's update never reached the model: the step is device 1's update alone
    only1 = tmp_path / "only1.csv"
    only1.write_text("device,start_s,end_s\n1,20,9000\n")
    ref = _run(digits, **{**kw, "availability_csv": str(only1)})
    assert np.array_equal(freed.params, ref.params)
