"""Test support for the TFLite tests: the real Fashion-MNIST (through fedtiny.datasets), a numpy
float64 forward pass (the oracle the exported models are checked against) and briefly trained
models."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view


@functools.lru_cache(maxsize=None)
def _fashion():
    from fedtiny import datasets
    try:
        return datasets.load("fashion-mnist")
    except ValueError as exc:  # the Debian package dataset-fashion-mnist is not installed
        pytest.skip(str(exc))


def fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, 28, 28, 1) in [0, 1], y int64 (N,)) of the real Fashion-MNIST split."""
    data = _fashion()
    return (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)


def forward(layers, input_shape, params, x, *, upto=None) -> np.ndarray:
    """numpy float64 forward pass of a layer-tuple model (fedtiny's parameter layout)."""
    n = x.shape[0]
    a = np.asarray(x, np.float64).reshape((n,) + tuple(input_shape))
    p = np.asarray(params, np.float64)
    off = 0
    for layer in layers[:upto]:
        kind = layer[0]
        if kind == "dense":
            n_in, n_out = layer[1], layer[2]
            w = p[off:off + n_in * n_out].reshape(n_out, n_in)
            b = p[off + n_in * n_out:off + n_in * n_out + n_out]
            off += n_in * n_out + n_out
            a = a.reshape(n, -1) @ w.T + b
        elif kind == "conv2d":
            oc, kh, kw, ic = layer[1:]
            w = p[off:off + oc * kh * kw * ic].reshape(oc, kh * kw * ic)
            b = p[off + oc * kh * kw * ic:off + oc * kh * kw * ic + oc]
            off += oc * kh * kw * ic + oc
            win = sliding_window_view(a, (kh, kw), axis=(1, 2))  # n, h', w', c, kh, kw
            h2, w2 = win.shape[1], win.shape[2]
            cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * h2 * w2, kh * kw * ic)
            a = (cols @ w.T + b).reshape(n, h2, w2, oc)
        elif kind == "relu":
            a = np.maximum(a, 0.0)
        elif kind == "maxpool2d":
            h2, w2 = a.shape[1] // 2, a.shape[2] // 2
            a = a[:, :2 * h2, :2 * w2].reshape(n, h2, 2, w2, 2, a.shape[3]).max(axis=(2, 4))
        elif kind == "flatten":
            a = a.reshape(n, -1)
        else:
            raise AssertionError(kind)
    return a


def n_params(layers) -> int:
    total = 0
    for layer in layers:
        if layer[0] == "dense":
            total += layer[1] * layer[2] + layer[2]
        elif layer[0] == "conv2d":
            total += int(np.prod(layer[1:])) + layer[1]
    return total


def he_init(layers, seed: int) -> np.ndarray:
    """Random parameters at the scale training starts from (He normal weights, small biases)."""
    rng = np.random.default_rng(seed)
    parts = []
    for layer in layers:
        if layer[0] == "dense":
            fan_in, n_w, n_b = layer[1], layer[1] * layer[2], layer[2]
        elif layer[0] == "conv2d":
            fan_in, n_w, n_b = int(np.prod(layer[2:])), int(np.prod(layer[1:])), layer[1]
        else:
            continue
        parts += [rng.standard_normal(n_w) * np.sqrt(2.0 / fan_in), rng.standard_normal(n_b) * 0.05]
    return np.concatenate(parts).astype(np.float32)


MLP = [("dense", 784, 128), ("relu",), ("dense", 128, 10)]
SMALL_CNN = [("conv2d", 8, 5, 5, 1), ("relu",), ("maxpool2d",), ("flatten",), ("dense", 12 * 12 * 8, 10)]

# Trained with fedtiny's own local SGD (the C engine); fast enough for the default run.
_RECIPES = {
    "2nn": dict(n=60000, epochs=1, batch_size=32, lr=0.02, momentum=0.9),      # ~83% test accuracy
    "cnn": dict(n=20000, epochs=1, batch_size=32, lr=0.02, momentum=0.9),      # ~84%
}


@functools.lru_cache(maxsize=None)
def trained(spec: str):
    """(Model, params) of `spec` trained briefly on the Fashion-MNIST training set."""
    from fedtiny.model import build
    from fedtiny.train import local_sgd
    recipe = dict(_RECIPES[spec])
    n = recipe.pop("n")
    x, y = fashion("train")
    model = build(spec)
    params = model.init(seed=0)
    local_sgd(model, params, x[:n], y[:n], seed=0, **recipe)
    params.flags.writeable = False  # shared by several tests
    return model, params
