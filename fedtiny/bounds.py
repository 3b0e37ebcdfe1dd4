"""Bounds on one device's influence: its weight n_k is checked and capped, its update's L2 norm clipped.

One implementation, used by the round logic (fedtiny.rounds: the UDP aggregator and `fedtiny
simulate` both go through it) and by differential privacy (fedtiny/privacy/: DP-FedAvg clips
every update to norm C before it adds noise of scale sigma * C, so `clip_factor` is that stage).

- Weight: a device's n_k must be a positive integer no larger than `max_samples`; the
  aggregator also requires it to equal what the device announced in its HELLO for the round.
  Above the cap the update is refused, not clamped: a device that claims more samples than any
  device of the fleet holds is lying or misconfigured, and it is told why (docs/network.md).
- Norm: the update's L2 norm is computed from its int8 blocks in one C pass (ft_sumsq_q8,
  float64, never decoded) and the update is scaled down to norm `clip_norm` (DP-style clipping)
  by scaling its accumulation weight: acc += (n_k * min(1, C / ||delta||)) * delta, while the
  FedAvg denominator still counts n_k. Clipped rather than refused: a refusal would drop
  honest devices whose first steps are large, and DP's sensitivity bound needs every update
  in the sum to have norm <= C, which scaling gives and refusing does not improve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _core
from .codec import Int8Update, LowbitUpdate

# 2^16 - 1: above the largest per-device datasets fedtiny targets (the whole 60,000-image
# Fashion-MNIST/MNIST training set on one device), and 65,536 devices at the cap still sum to
# less than 2^32, the u32 n_samples field of the round summary. A keyed liar can claim up to
# the cap, so an operator whose devices hold ~600 samples each should set it near that.
DEFAULT_MAX_SAMPLES = 65_535
# Honest update norms measured at the default lr 0.05, E=1, B=10 (docs/network.md "Bounds"):
# mlp:64-32-10 on digits 0.8-0.9; 2nn on Fashion-MNIST 1.9 then 0.8 (600 samples per device),
# 4.5 then 1.8 (6,000). At 1.0 an honest small-shard update is barely touched while a
# sign-flipped x10 update from one of four devices can remove at most 1.0 of the ~2.3 that the
# three honest ones add. Raise it for models whose honest updates are larger (the per-round
# "clipped" count shows how many were scaled).
DEFAULT_CLIP_NORM = 1.0
MAX_WIRE_SAMPLES = 2**32 - 1      # n_samples is a u32 on the wire

# Named reasons (counted per round next to the round logic's own).
TOO_MANY_SAMPLES = "too_many_samples"
BAD_SAMPLES = "bad_samples"
CLIPPED = "clipped"
NONFINITE_STEP = "nonfinite_step"


@dataclass(frozen=True)
class Bounds:
    """What one device may put into a round: n_k in [1, max_samples], update norm <= clip_norm.
    None switches a bound off (the simulation's default: it has no adversary)."""

    max_samples: int | None = DEFAULT_MAX_SAMPLES
    clip_norm: float | None = DEFAULT_CLIP_NORM

    def __post_init__(self):
        if self.max_samples is not None and not (isinstance(self.max_samples, int) and
                                                 1 <= self.max_samples <= MAX_WIRE_SAMPLES):
            raise ValueError(f"max samples must be an integer in 1..{MAX_WIRE_SAMPLES}, got {self.max_samples!r}")
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip norm must be a positive finite number, got {self.clip_norm!r}")

    def check_samples(self, n_samples, devices: int = 1) -> str | None:
        """Why n_samples cannot be a FedAvg weight, or None: it must be a whole number in
        [1, max_samples] (the wire carries a u32; the simulation passes Python ints); for the
        partial sum of `devices` devices, in [1, devices * max_samples]."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer, float, np.floating)):
            return f"{BAD_SAMPLES}: sample count must be a number, got {type(n_samples).__name__}"
        n = float(n_samples)
        if not (math.isfinite(n) and n >= 1 and n == int(n)):
            return f"{BAD_SAMPLES}: sample count must be a positive whole number, got {n_samples!r}"
        if self.max_samples is not None and int(n) > self.max_samples * devices:
            per = "" if devices == 1 else f" x {devices} devices"
            return (f"{TOO_MANY_SAMPLES}: {int(n)} samples exceed the aggregator's --max-samples "
                    f"{self.max_samples}{per}")
        return None


def update_norm(update: Int8Update | LowbitUpdate | np.ndarray) -> float:
    """L2 norm of an update as float64, from its int8 blocks without decoding (C, one pass)."""
    if isinstance(update, Int8Update):
        return math.sqrt(_core.sumsq_q8(update.blocks, len(update)))
    if isinstance(update, LowbitUpdate):  # no norm kernel for the sub-byte codecs yet: a decoded copy
        return math.sqrt(_core.sumsq_f32(update.decode()))
    return math.sqrt(_core.sumsq_f32(update))


def all_finite(x: np.ndarray) -> bool:
    """True when a float32 vector holds no NaN or Inf, without a model-sized temporary (np.isfinite
    would allocate one): its float64 sum of squares is finite exactly then (n * FLT_MAX^2 << DBL_MAX)."""
    return math.isfinite(_core.sumsq_f32(x))


def clip_factor(norm: float, clip_norm: float | None) -> float:
    """min(1, C / norm): the scale that brings an update of this norm to at most C (1 if no bound)."""
    if clip_norm is None or norm <= clip_norm:
        return 1.0
    if not math.isfinite(norm):
        return 0.0
    return clip_norm / norm


def scaled_weight(weight: float, factor: float) -> float:
    """weight * factor as the float32 the accumulate kernel multiplies by, rounded toward zero,
    so a clipped update never enters the sum with a norm above the bound by rounding."""
    exact = float(weight) * float(factor)
    w32 = np.float32(exact)
    if float(w32) > exact:
        w32 = np.nextafter(w32, np.float32(0.0))
    return float(w32)


__all__ = ["Bounds", "all_finite", "DEFAULT_CLIP_NORM", "DEFAULT_MAX_SAMPLES", "clip_factor", "scaled_weight", "update_norm"]
