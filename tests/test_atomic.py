"""Atomic outputs (fedtiny.atomic): a real SIGKILL in the middle of a write leaves the old file
or the new one, and the temporary it leaves is removed by the next run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np

from fedtiny import atomic
from fedtiny.net import state

# Kill this process with SIGKILL at the Nth fsync: after a temporary is fully written, before
# its rename (atomic_write's order: write, fsync, rename). Deterministic, and a real kill.
KILL_AT_FSYNC = """
import os, signal, sys
n = int(sys.argv[1]); calls = [0]; real = os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
os.fsync = fsync
from fedtiny import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def _stale(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".tmp"))


def _simulate(out, kill_at=None):
    args = ["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "4", "--fraction", "1",
            "--rounds", "1", "--personalize", "1", "--quiet", "--out", str(out)]
    cmd = ([sys.executable, "-c", KILL_AT_FSYNC, str(kill_at)] if kill_at else [sys.executable, "-m", "fedtiny.cli"]) + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_sigkill_during_simulate_outputs_leaves_whole_files_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "out"
    assert _simulate(out).returncode == 0
    before = {n: (out / n).read_bytes() for n in ("rounds.csv", "result.json", "params.npy", "personalization.csv")}
    # two fsyncs per file (the file, its directory): the 5th is params.npy's, before its rename
    res = _simulate(out, kill_at=5)
    assert res.returncode == -signal.SIGKILL
    assert _stale(out) and all(s.startswith(".params.npy.ft-") for s in _stale(out))
    assert (out / "params.npy").read_bytes() == before["params.npy"]          # the old file, whole
    assert np.load(out / "params.npy").dtype == np.float32
    json.loads((out / "result.json").read_text())                             # the new file, whole
    assert _simulate(out).returncode == 0
    assert _stale(out) == []
    assert (out / "params.npy").read_bytes() == before["params.npy"]          # same seed, same weights


def test_remove_stale_touches_only_its_own_temporaries(tmp_path):
    (tmp_path / ".params.npy.ft-abc123.tmp").write_bytes(b"x")
    (tmp_path / ".rounds.csv.ft-zz.tmp").write_bytes(b"x")
    (tmp_path / "mine.tmp").write_bytes(b"keep")
    (tmp_path / ".hidden.tmp").write_bytes(b"keep")
    assert atomic.remove_stale(str(tmp_path), ["params.npy"]) == [".params.npy.ft-abc123.tmp"]
    assert sorted(atomic.remove_stale(str(tmp_path))) == [".rounds.csv.ft-zz.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden.tmp", "mine.tmp"]


def test_an_exception_mid_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def boom(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", boom)
    try:
        atomic.atomic_write(str(target), b"new")
    except OSError:
        pass
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_state_save_removes_what_a_killed_save_left(tmp_path):
    d = tmp_path / "st"
    state.save(str(d), state.Checkpoint(1, np.zeros(4, np.float32)))
    (d / ".weights-000002.npy.ft-k1ll3d.tmp").write_bytes(b"torn")
    state.save(str(d), state.Checkpoint(2, np.ones(4, np.float32)))
    assert _stale(d) == [] and state.load(str(d)).round == 2
