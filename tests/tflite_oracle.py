"""Test support for the TFLite tests: the real Fashion-MNIST files, a numpy float64 forward pass
(the oracle the exported models are checked against) and a small numpy trainer."""
from __future__ import annotations

import functools
import gzip
import os

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

# Debian package dataset-fashion-mnist installs the IDX files here.
FASHION_DIR = os.environ.get("FEDTINY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)
def fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, 28, 28, 1) in [0, 1], y int64 (N,)) of the real Fashion-MNIST split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(images):
        pytest.skip(f"Fashion-MNIST not found in {FASHION_DIR} (apt install dataset-fashion-mnist)")
    x = _idx(images).astype(np.float32)[..., None] / 255.0
    y = _idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    return x, y


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


def softmax_sgd(feats, y, n_classes, *, hidden=0, epochs=2, lr=0.1, batch=64, seed=0):
    """Flat params of a dense head (feat-[hidden]-n_classes, ReLU) trained by numpy minibatch SGD."""
    rng = np.random.default_rng(seed)
    dims = [feats.shape[1]] + ([hidden] if hidden else []) + [n_classes]
    ws = [rng.standard_normal((o, i)).astype(np.float32) * np.float32(np.sqrt(2.0 / i))
          for i, o in zip(dims[:-1], dims[1:])]
    bs = [np.zeros(o, np.float32) for o in dims[1:]]
    lr = np.float32(lr)
    for _ in range(epochs):
        order = rng.permutation(feats.shape[0])
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            acts = [feats[idx].reshape(len(idx), -1)]
            for k, (w, b) in enumerate(zip(ws, bs)):
                z = acts[-1] @ w.T + b
                acts.append(np.maximum(z, 0) if k + 1 < len(ws) else z)
            z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
            prob = np.exp(z)
            prob /= prob.sum(axis=1, keepdims=True)
            prob[np.arange(len(idx)), y[idx]] -= 1
            grad = prob / np.float32(len(idx))
            for k in range(len(ws) - 1, -1, -1):
                gw, gb = grad.T @ acts[k], grad.sum(axis=0)
                if k:
                    grad = (grad @ ws[k]) * (acts[k] > 0)
                ws[k] -= lr * gw
                bs[k] -= lr * gb
    return np.concatenate([np.concatenate([w.ravel(), b]) for w, b in zip(ws, bs)]).astype(np.float32)


MLP = [("dense", 784, 128), ("relu",), ("dense", 128, 10)]
SMALL_CNN = [("conv2d", 8, 5, 5, 1), ("relu",), ("maxpool2d",), ("flatten",), ("dense", 12 * 12 * 8, 10)]


@functools.lru_cache(maxsize=None)
def trained_mlp() -> np.ndarray:
    """784-128-10 trained one epoch on the Fashion-MNIST training set (~84% test accuracy)."""
    x, y = fashion("train")
    return softmax_sgd(x.reshape(len(x), -1), y, 10, hidden=128, epochs=1, lr=0.05, batch=32)


@functools.lru_cache(maxsize=None)
def trained_small_cnn() -> np.ndarray:
    """SMALL_CNN: a fixed random 5x5 conv (8 channels) with its dense layer trained on 20k images."""
    x, y = fashion("train")
    x, y = x[:20000], y[:20000]
    conv = he_init(SMALL_CNN[:1], seed=3)
    feats = np.concatenate([forward(SMALL_CNN[:4], (28, 28, 1), conv, x[s:s + 2000]).astype(np.float32)
                            for s in range(0, len(x), 2000)])
    head = softmax_sgd(feats, y, 10, epochs=3, lr=0.02)
    return np.concatenate([conv, head])
