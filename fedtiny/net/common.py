"""What the network programs (aggregator, client, bridge, demo) and the Flower ClientApp share:
addresses, logging, protocol pacing, a device's local data."""
from __future__ import annotations

import logging
import sys

import numpy as np

from .. import npz

MODEL_WINDOW = 64         # model chunks sent per ACK from a device
PACE_SECONDS = 0.002      # the aggregator's download pacer: its tick while a download runs
PACE_BATCH = 64           # and the model chunks it sends at most per tick or ACK


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    text = text.removeprefix("udp://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not HOST:PORT")
    return host, int(port)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def load_data(path: str, model) -> tuple[np.ndarray, np.ndarray]:
    """x, y from an .npz with arrays "x" (float32, N x input) and "y" (integer labels); the
    sample size is checked against model unless it is None (a backbone reads x first)."""
    arrays = npz.read(path, ("x", "y"))   # not np.load: zipfile and its imports cost a device ~1.3 MB
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: x must be a real-valued array of samples (N x features), got {x.dtype} {x.shape}")
    if x.dtype != np.float32:
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)       # a float64 beyond FLT_MAX becomes Inf: refused below
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{path}: x has {len(x)} rows, y {len(y)}; need the same number, at least 1")
    if model is not None and int(np.prod(x.shape[1:])) != int(np.prod(model.input_shape)):
        raise ValueError(f"{path}: samples of shape {x.shape[1:]}, the model takes {model.input_shape}")
    check_features(path, x)
    return np.ascontiguousarray(x), check_labels(path, y, None if model is None else model.n_classes)


def check_labels(path: str, y: np.ndarray, n_classes: int | None) -> np.ndarray:
    """y as int64 class indices, or one ValueError naming the first bad label and the fix."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{path}: y must be 1-D (one class index per sample), got shape {y.shape}")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{path}: y must hold integer class labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise ValueError(f"{path}: y holds {bad.size} label(s) that are not whole numbers (first: {float(y[bad[0]])!r} "
                             f"at row {bad[0]}); labels are class indices: save y as integers")
    out_of_range = (y < 0) if n_classes is None else (y < 0) | (y >= n_classes)
    bad = np.flatnonzero(out_of_range)
    if bad.size:
        where = ">= 0" if n_classes is None else f"[0, {n_classes})"
        raise ValueError(f"{path}: y holds {bad.size} label(s) outside {where} (first: {int(y[bad[0]])} at row "
                         f"{bad[0]}); relabel the data, or use a --model with as many outputs as classes")
    return y.astype(np.int64)


def check_features(path: str, x: np.ndarray) -> None:
    """One ValueError if x holds NaN or Inf (training would turn the model into NaN)."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{path}: x holds NaN or Inf in {rows.size} sample(s) (first at row {rows[0]}); "
                         f"drop or repair those rows before joining")
