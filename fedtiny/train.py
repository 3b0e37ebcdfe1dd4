"""Local SGD on one device: the loop runs in C (csrc/train_net.c) with the GIL released."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _core
from .model import Model, _check_batch, _flags


@dataclass(frozen=True)
class TrainResult:
    """What one local_sgd call did: samples seen, their mean loss, SGD steps taken."""

    n_samples: int
    loss: float
    steps: int


def _check_float(name: str, v, lo: float = 0.0, strict: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f < lo or (strict and f == lo):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lo}, got {v!r}")
    return f


def local_sgd(model: Model, params: np.ndarray, x, y, *, epochs: int, batch_size: int, lr: float,
              momentum: float = 0.0, prox_mu: float = 0.0, global_params: np.ndarray | None = None,
              weights: str = "float32", seed: int = 0, max_steps: int | None = None,
              weight_decay: float = 0.0, delta: bool = False) -> TrainResult:
    """Minibatch SGD over (x, y) for `epochs` epochs, updating `params` in place.

    Update per step, g = mean-loss gradient + weight_decay*w + prox_mu*(w - global_params):
    v = momentum*v + g, w -= lr*v (plain SGD when momentum is 0). Shuffling is a numpy PCG64
    permutation per epoch from `seed` (epoch_order); the last batch of an epoch may be smaller. With
    weights="int8" the weights live as int8 blocks during training and each update is
    re-quantized with stochastic rounding (keyed by `seed` and the step); `params` gets the
    dequantized result. `max_steps` caps the SGD steps over all epochs.

    delta=True: `params` gets trained - initial (float32) instead of the trained weights, the
    update a device sends, without a second copy of the model (the weights train in the arena,
    so `params` still holds the initial ones until the end). With prox_mu > 0, `global_params` may
    be `params` itself.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fedtiny.model.Model, got {type(model).__name__}")
    model.check_params(params, writable=True)
    x2 = model.check_x(x)
    y2 = model.check_y(y, x2.shape[0])
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    batch = _check_batch(batch_size)
    lr = _check_float("lr", lr, strict=True)
    momentum = _check_float("momentum", momentum)
    if momentum >= 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    prox_mu = _check_float("prox_mu", prox_mu)
    weight_decay = _check_float("weight_decay", weight_decay)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer))
                                  or max_steps < 0):
        raise ValueError(f"max_steps must be None or a non-negative integer, got {max_steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    prox = prox_mu > 0.0
    if prox:
        if global_params is None:
            raise ValueError("prox_mu > 0 needs global_params (the round's global weights)")
        model.check_params(global_params, "global_params")
    flags = _flags(momentum > 0.0, prox, weights) | model.loss_flag

    n = x2.shape[0]
    # the arena serves batches up to its own size: for data smaller than a batch, a power of two
    # >= n is enough (and bounds how many arenas clients of many sizes leave in the cache)
    batch = min(batch, 1 << (n - 1).bit_length())
    arena = model._arena(batch, flags)
    desc = model._desc
    _core.train_load(desc, model.n_params, batch, flags, params, global_params if prox else None, arena)
    loss_sum, seen, steps = 0.0, 0, 0
    cap = -1 if max_steps is None else int(max_steps)
    idx = np.empty(n, dtype=np.int32)
    for epoch in range(epochs):
        if cap >= 0 and steps >= cap:
            break
        _core.shuffle_i32(idx, int(seed), epoch)
        ls, s, st = _core.train_sgd(desc, model.n_params, batch, flags, lr, momentum, weight_decay, prox_mu,
                                    int(seed), steps, x2, y2, idx, -1 if cap < 0 else cap - steps, arena)
        loss_sum += ls
        seen += s
        steps += st
    _core.train_store(desc, model.n_params, batch, flags, arena, params, bool(delta))
    return TrainResult(n_samples=seen, loss=loss_sum / seen if seen else float("nan"), steps=steps)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order local_sgd uses in `epoch` (0-based) for this seed: a Fisher-Yates
    permutation from the codec's counter-based generator (no numpy.random: it costs ~7 MB RSS)."""
    idx = np.empty(int(n), dtype=np.int32)
    _core.shuffle_i32(idx, int(seed), int(epoch))
    return idx


def evaluate(model: Model, params: np.ndarray, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) of `params` on (x, y): softmax cross-entropy, or for a model whose spec
    ends in 'mse' the mean squared error against one-hot labels (the loss it trains)."""
    return loss_and_accuracy(model, model.predict(params, x), y)


def loss_and_accuracy(model: Model, logits: np.ndarray, y) -> tuple[float, float]:
    """evaluate's figures from the logits (a caller may compute them in parts: model.predict
    gives each row the same logits in any batch)."""
    logits = np.asarray(logits).astype(np.float64)
    y2 = model.check_y(y, logits.shape[0])
    if model.loss == "mse":
        t = np.zeros_like(logits)
        t[np.arange(len(y2)), y2] = 1.0
        return float(np.mean((logits - t) ** 2)), float(np.mean(logits.argmax(axis=1) == y2))
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    loss = float(np.mean(lse - logits[np.arange(len(y2)), y2]))
    acc = float(np.mean(logits.argmax(axis=1) == y2))
    return loss, acc


def gradient(model: Model, params: np.ndarray, x, y) -> tuple[float, np.ndarray]:
    """(mean loss, its gradient in the parameter layout) on one batch: FedSGD and tests."""
    model.check_params(params)
    x2 = model.check_x(x)
    y2 = model.check_y(y, x2.shape[0])
    batch = _check_batch(x2.shape[0])
    flags = model.loss_flag
    arena = model._arena(batch, flags)
    _core.train_load(model._desc, model.n_params, batch, flags, params, None, arena)
    grad = np.empty(model.n_params, dtype=np.float32)
    loss = _core.train_grad(model._desc, model.n_params, batch, flags, x2, y2, arena, grad)
    return loss / x2.shape[0], grad
