"""What the network programs (aggregator, client, bridge, demo) and the Flower ClientApp share:
addresses, logging, protocol pacing, a device's local data."""
from __future__ import annotations

import logging
import sys

import numpy as np

MODEL_WINDOW = 64         # model chunks sent per ACK from a device


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
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise ValueError(f"{path} must hold arrays 'x' and 'y', it has {', '.join(z.files) or 'none'}")
            x, y = z["x"], z["y"]
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{path}: x has {len(x)} rows, y {len(y)}; need the same number, at least 1")
    if model is not None and int(np.prod(x.shape[1:])) != int(np.prod(model.input_shape)):
        raise ValueError(f"{path}: samples of shape {x.shape[1:]}, the model takes {model.input_shape}")
    return np.ascontiguousarray(x), np.asarray(y, dtype=np.int64)
