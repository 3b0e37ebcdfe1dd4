"""The aggregator's checkpoint, written atomically after every round so a kill loses at most
the round in progress.

Layout of the state directory:
    weights-<round>.npy   global float32 weights after <round> finished rounds
    optim-<round>.npz     server optimizer state (arrays) after that round
    state.json            the commit point: round, file names, metrics of every round, config
    run.json              the run id and the epoch of the latest process life (begin_life)
    metrics.json / .csv   the same metrics for people and plots (rewritten each round)
Each file is written to a temporary file in the same directory, fsynced, then renamed over its
target with os.replace; state.json is written last, so a crash at any point leaves either the
previous round's complete state or the new one, never a mix. Older weights files are removed
after the commit.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_write, remove_stale  # noqa: F401  (atomic_write: public here since before fedtiny.atomic)

STATE_FILE = "state.json"
FORMAT = 1


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


RUN_FILE = "run.json"
RUN_ID_BYTES = 8
MAX_EPOCH = 2**32 - 1


def begin_life(directory: str) -> tuple[bytes, int]:
    """The run id and the epoch of this process life, made durable before it returns.

    A state directory without run.json starts a new run: a random 8-byte run id, epoch 1.
    Otherwise the run id is kept and the epoch is the stored one plus one. run.json is written
    atomically and fsynced (atomic_write) before the caller sends or accepts any frame, so no
    two lives of a run ever share an epoch, whatever the moment of a crash."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, RUN_FILE)
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                run = json.loads(f.read())
            run_id = bytes.fromhex(run["run_id"])
            epoch = run["epoch"]
            if len(run_id) != RUN_ID_BYTES or isinstance(epoch, bool) or not isinstance(epoch, int) \
                    or not 1 <= epoch <= MAX_EPOCH:
                raise ValueError(f"run_id must be {2 * RUN_ID_BYTES} hex digits and epoch in 1..{MAX_EPOCH}")
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path} is damaged ({exc}): restore it, or start a new run with an empty "
                             f"--state directory") from None
        if epoch == MAX_EPOCH:
            raise ValueError(f"{path}: epoch {epoch} is the last one; start a new run with an empty --state directory")
        epoch += 1
    else:
        run_id, epoch = os.urandom(RUN_ID_BYTES), 1
    atomic_write(path, json.dumps({"format": FORMAT, "run_id": run_id.hex(), "epoch": epoch}).encode())
    return run_id, epoch


@dataclass
class Checkpoint:
    round: int                                   # rounds finished
    weights: np.ndarray                          # float32 global model
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def save(directory: str, ckpt: Checkpoint) -> None:
    os.makedirs(directory, exist_ok=True)
    remove_stale(directory)   # left by a kill during an earlier save
    weights_name = f"weights-{ckpt.round:06d}.npy"
    optim_name = f"optim-{ckpt.round:06d}.npz"
    atomic_write(os.path.join(directory, weights_name), _npy_bytes(np.asarray(ckpt.weights, dtype=np.float32)))
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in ckpt.optimizer.items()})
    atomic_write(os.path.join(directory, optim_name), buf.getvalue())
    state = {"format": FORMAT, "round": ckpt.round, "weights": weights_name, "optimizer": optim_name,
             "config": ckpt.config, "metrics": ckpt.metrics}
    atomic_write(os.path.join(directory, STATE_FILE), json.dumps(state, indent=1, allow_nan=True).encode())
    # Not part of the commit: derived files and cleanup of older rounds.
    atomic_write(os.path.join(directory, "metrics.json"), json.dumps(ckpt.metrics, indent=1).encode())
    atomic_write(os.path.join(directory, "metrics.csv"), _csv(ckpt.metrics).encode())
    for name in os.listdir(directory):
        if (name.startswith(("weights-", "optim-")) and name not in (weights_name, optim_name)
                and not name.startswith(".")):
            os.unlink(os.path.join(directory, name))


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list))]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def check_state(state: Any) -> str | None:
    """What is wrong with a parsed state.json, or None: the commit point must name files in its
    own directory and hold a round >= 0 and lists/objects where later rounds append and read."""
    if not isinstance(state, dict):
        return f"it holds a JSON {type(state).__name__}, not an object"
    if state.get("format") != FORMAT:
        return f"format {state.get('format')!r}, this fedtiny reads {FORMAT}"
    rnd = state.get("round")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        return f"round must be a whole number >= 0, got {rnd!r}"
    for key in ("weights", "optimizer"):
        name = state.get(key)
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name.startswith("."):
            return f"{key} must name a file in the state directory, got {name!r}"
    if not isinstance(state.get("metrics", []), list) or not all(isinstance(m, dict) for m in state.get("metrics", [])):
        return "metrics must be a list of objects (one per round)"
    if not isinstance(state.get("config", {}), dict):
        return "config must be an object"
    return None


def load(directory: str) -> Checkpoint | None:
    """The last committed checkpoint in directory, or None when it holds none."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"--state {directory} is a file, not a directory: name a new or existing directory "
                         f"(the file is left as it is)")
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
        problem = check_state(state)
        if problem:
            raise ValueError(f"{STATE_FILE} is not a fedtiny checkpoint: {problem}; move the directory away "
                             f"or point --state at another one")
        weights = np.load(os.path.join(directory, state["weights"]), allow_pickle=False)
        with np.load(os.path.join(directory, state["optimizer"]), allow_pickle=False) as z:
            optimizer = {k: z[k] for k in z.files}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"state directory {directory}: unreadable checkpoint ({exc})") from None
    if weights.dtype != np.float32 or weights.ndim != 1:
        raise ValueError(f"state directory {directory}: weights are {weights.dtype} {weights.shape}, expected 1-D float32")
    if not np.isfinite(weights).all():
        raise ValueError(f"state directory {directory}: the saved model holds NaN or Inf (written by an older "
                         f"fedtiny); start from another --state")
    return Checkpoint(int(state["round"]), weights, optimizer, list(state.get("metrics", [])),
                      dict(state.get("config", {})))
