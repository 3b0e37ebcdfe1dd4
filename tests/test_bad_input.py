"""Every bad input of issue 10 (bounds part): one clear line naming the problem and the fix,
exit code 2, nothing lost, never a hang. Real `fedtiny` processes where a process is the point."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from fedtiny.net import keys, state
from fedtiny.net.client import check_labels
from netutil import CLIENT_ENV, AggregatorThread, Fleet, MODEL, client_logs, stop_all

FEDTINY = [sys.executable, "-m", "fedtiny.cli"]


def _run(args, cwd, timeout=30, umask=None):
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(FEDTINY + args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=CLIENT_ENV, preexec_fn=pre)


def _one_line(res, prog):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith(f"fedtiny {prog}: error: "), lines
    return lines[0]


@pytest.fixture
def keyfile(tmp_path):
    path = str(tmp_path / "fleet.keys")
    keys.write_keys(path, keys.generate(range(4)))
    return path


# --- a client validates its data before it joins -------------------------------------------

def _good():
    rng = np.random.default_rng(0)
    return rng.random((20, 64), dtype=np.float32), rng.integers(0, 10, 20)


def _nan(x, y):
    x[3, 5] = np.nan
    return x, y


def _inf(x, y):
    x[7, 0] = np.inf
    return x, y


def _label(v):
    def f(x, y):
        y = y.astype(type(v) if isinstance(v, float) else np.int64)
        y[4] = v
        return x, y
    return f


def _float_labels(x, y):
    return x, y.astype(np.float64) + 0.5


def _y_2d(x, y):
    return x, y.reshape(-1, 1)


def _x_1d(x, y):
    return x[:, 0], y


def _x_wide(x, y):
    return np.hstack([x, x]), y


@pytest.mark.parametrize("make,problem,fix", [
    (_nan, "x holds NaN or Inf in 1 sample(s) (first at row 3)", "drop or repair those rows"),
    (_inf, "x holds NaN or Inf in 1 sample(s) (first at row 7)", "drop or repair those rows"),
    (_label(42), "y holds 1 label(s) outside [0, 10) (first: 42 at row 4)", "relabel the data"),
    (_label(-1), "y holds 1 label(s) outside [0, 10) (first: -1 at row 4)", "relabel the data"),
    (_float_labels, "20 label(s) that are not whole numbers (first: ", "save y as integers"),
    (_label(2.5), "not whole numbers (first: 2.5 at row 4", "save y as integers"),
    (_y_2d, "y must be 1-D", "one class index per sample"),
    (_x_1d, "x must be a real-valued array of samples (N x features)", "N x features"),
    (_x_wide, "samples of shape (128,), the model takes (64,)", "the model takes"),
])
def test_client_refuses_bad_data_before_joining(tmp_path, keyfile, make, problem, fix):
    x, y = make(*_good())
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    # nothing listens on the port: a client that got past its data check would wait forever
    res = _run(["client", "--server", "127.0.0.1:9", "--device-id", "1", "--key", keyfile, "--data", str(data),
                "--model", MODEL], tmp_path, timeout=30)
    line = _one_line(res, "client")
    assert problem in line and fix in line and str(data) in line


def test_whole_float_labels_are_taken_as_integers():
    y = check_labels("d.npz", np.array([0.0, 3.0, 9.0]), 10)
    assert y.dtype == np.int64 and y.tolist() == [0, 3, 9]


# --- a client that cannot train stops with one line and exit 2 -------------------------------

def _client_against(tmp_path, mutate_aggregator, **cfg):
    fleet = Fleet(tmp_path, 1)
    with AggregatorThread(fleet.config(rounds=1, round_timeout=5, dataset=None, **cfg)) as at:
        mutate_aggregator(at.agg)
        procs = fleet.start_clients(at.server)
        try:
            code = procs[0].wait(timeout=30)      # never a hang
            err = client_logs(procs)
        finally:
            stop_all(procs)
    return code, err


def test_client_given_a_nonfinite_model_stops_with_one_line(tmp_path):
    def poison(agg):   # a broken aggregator (this one refuses to write such a model itself)
        agg.server.params[5] = np.nan
    code, err = _client_against(tmp_path, poison)
    assert code == 2, err
    assert "the aggregator sent a model with NaN or Inf weights; stopping" in err and "Traceback" not in err


def test_client_whose_training_diverges_stops_with_one_line(tmp_path):
    code, err = _client_against(tmp_path, lambda agg: None, lr=1e30)
    assert code == 2, err
    assert "local training failed: training diverged" in err and "Traceback" not in err


# --- keys --------------------------------------------------------------------------------------

def test_fedtiny_keys_writes_0600_files_whatever_the_umask(tmp_path):
    out = tmp_path / "fleet.keys"
    res = _run(["keys", str(out), "--devices", "0-2,7", "--device-files", str(tmp_path / "dev")], tmp_path, umask=0)
    assert res.returncode == 0, res.stderr
    ks = keys.load_keys(str(out))
    assert sorted(ks) == [0, 1, 2, 7] and all(len(k) == 32 for k in ks.values())
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    for d in (0, 1, 2, 7):
        f = tmp_path / "dev" / f"device-{d}.keys"
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
        assert keys.load_keys(str(f)) == {d: ks[d]}


def test_fedtiny_keys_never_overwrites(tmp_path):
    out = tmp_path / "fleet.keys"
    out.write_text("precious\n")
    line = _one_line(_run(["keys", str(out), "--devices", "3"], tmp_path), "keys")
    assert "already exists: keys are never overwritten" in line
    assert out.read_text() == "precious\n"
    line = _one_line(_run(["keys", str(tmp_path / "k2"), "--devices", "x"], tmp_path), "keys")
    assert "give a count (10) or ids and ranges (0-9,12)" in line and not (tmp_path / "k2").exists()


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o620])
@pytest.mark.parametrize("program", ["aggregate", "client"])
def test_keys_open_to_group_or_others_are_refused_with_the_chmod(tmp_path, keyfile, mode, program):
    os.chmod(keyfile, mode)
    np.savez(tmp_path / "d.npz", *(), x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64))
    args = (["aggregate", "--listen", "127.0.0.1:0", "--keys", keyfile, "--state", str(tmp_path / "st")]
            if program == "aggregate" else
            ["client", "--server", "127.0.0.1:9", "--device-id", "1", "--key", keyfile, "--data", str(tmp_path / "d.npz")])
    line = _one_line(_run(args, tmp_path), program)
    assert f"has mode {mode:04o}" in line and line.endswith(f"run chmod 600 {keyfile}")
    assert not (tmp_path / "st").exists()


# --- the aggregator's --state ------------------------------------------------------------------

def _aggregate(tmp_path, keyfile, state_dir):
    return _run(["aggregate", "--listen", "127.0.0.1:0", "--keys", keyfile, "--state", str(state_dir),
                 "--rounds", "1", "--dataset", "none"], tmp_path)


def test_state_naming_a_file_is_refused_at_start_and_the_file_kept(tmp_path, keyfile):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    line = _one_line(_aggregate(tmp_path, keyfile, f), "aggregate")
    assert f"--state {f} is a file, not a directory" in line
    assert f.read_text() == "mine\n"


@pytest.mark.parametrize("edit,problem", [
    (lambda s: [], "it holds a JSON list, not an object"),
    (lambda s: {**s, "round": -1}, "round must be a whole number >= 0, got -1"),
    (lambda s: {**s, "round": "3"}, "round must be a whole number >= 0, got '3'"),
    (lambda s: {**s, "round": True}, "round must be a whole number >= 0, got True"),
    (lambda s: {**s, "metrics": {"a": 1}}, "metrics must be a list of objects"),
    (lambda s: {**s, "metrics": [1, 2]}, "metrics must be a list of objects"),
    (lambda s: {**s, "config": []}, "config must be an object"),
    (lambda s: {**s, "weights": "../weights.npy"}, "weights must name a file in the state directory"),
    (lambda s: {**s, "optimizer": 7}, "optimizer must name a file in the state directory"),
])
def test_bad_state_json_is_one_line_and_nothing_is_lost(tmp_path, keyfile, edit, problem):
    d = tmp_path / "st"
    state.save(str(d), state.Checkpoint(2, np.zeros(2410, np.float32), {}, [{"round": 1}, {"round": 2}], {}))
    path = d / "state.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    line = _one_line(_aggregate(tmp_path, keyfile, d), "aggregate")
    assert problem in line and "move the directory away or point --state at another one" in line
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_a_saved_nonfinite_model_is_refused(tmp_path, keyfile):
    d = tmp_path / "st"
    w = np.zeros(2410, np.float32)
    w[3] = np.inf
    state.save(str(d), state.Checkpoint(1, w, {}, [{"round": 1}], {}))
    line = _one_line(_aggregate(tmp_path, keyfile, d), "aggregate")
    assert "the saved model holds NaN or Inf" in line and "start from another --state" in line
