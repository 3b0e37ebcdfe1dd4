"""L2 clipping of one device's update: a fixed bound, or an adaptive one that tracks a quantile.

Pure functions on float32 vectors. The norm is the C kernel ft_l2norm_f32 (squares exact in
float64, the one L2 norm of the project, shared with secure aggregation's grid). A clipped vector
is checked after scaling, so float32 rounding can never leave its norm above the bound.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021): each round every device
reports b_k = 1[||delta_k|| <= C]; the aggregator releases the noised count
b = (sum_k (b_k - 1/2) + N(0, sigma_b^2)) / m + 1/2 and steps C <- C exp(-eta (b - gamma)), so C
tends to the gamma-quantile of update norms. The count costs privacy: with total noise
multiplier z the update noise must be z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (their Thm. 1).
"""
from __future__ import annotations

import math

import numpy as np

from .. import _core, bounds


def l2_norm(v: np.ndarray) -> float:
    """The L2 norm of a float32 vector, accumulated in float64 (C); inf if it holds NaN or Inf."""
    if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim != 1:
        raise ValueError("l2_norm takes a 1-D float32 vector")
    try:
        return float(_core.l2norm_f32(np.ascontiguousarray(v)))
    except ValueError:  # NaN or Inf: no norm to clip to
        return math.inf


def check_bound(bound: float, what: str = "--clip-norm") -> float:
    b = float(bound)
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"{what} must be a positive number, got {bound!r}")
    return b


def clip(delta: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """(delta scaled to L2 norm <= bound, the norm before clipping); a copy, delta is untouched.

    A non-finite delta is refused (ValueError): it has no norm to clip to.
    """
    bound = check_bound(bound)
    if not isinstance(delta, np.ndarray) or delta.dtype != np.float32 or delta.ndim != 1:
        raise ValueError("clip takes a 1-D float32 update")
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("update holds NaN or Inf (or overflows): it cannot be clipped")
    out = delta.copy()
    factor = bounds.clip_factor(norm, bound)  # the aggregator's rule, min(1, C / norm)
    if factor == 1.0:
        return out, norm
    while True:  # float32 rounding of the scaled values can land just above the bound
        np.multiply(delta, np.float32(factor), out=out, casting="same_kind")
        if l2_norm(out) <= bound:
            return out, norm
        factor *= 1 - 2.0 ** -20


def update_noise_multiplier(z: float, count_std: float) -> float:
    """z_delta for the updates when the clipped-count is released with noise std count_std and the
    round as a whole must have noise multiplier z (Andrew et al. 2021, Theorem 1)."""
    if not count_std > z / 2:
        raise ValueError(f"adaptive clipping: the count's noise std {count_std:g} must exceed z/2 = {z / 2:g} "
                         f"(sigma_b = devices per round / 20: use more devices per round or a smaller --noise-multiplier)")
    return (z ** -2 - (2 * count_std) ** -2) ** -0.5


class AdaptiveClip:
    """The clip bound C, moved each round toward the target quantile of the update norms."""

    def __init__(self, initial: float, quantile: float, *, lr: float = 0.2, count_std: float):
        self.bound = check_bound(initial)
        if not 0 < quantile < 1:
            raise ValueError(f"--adaptive-clip takes a quantile in (0, 1), got {quantile}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"adaptive clipping lr must be positive, got {lr}")
        if not (math.isfinite(count_std) and count_std >= 0):
            raise ValueError(f"adaptive clipping count noise must be >= 0, got {count_std}")
        self.quantile, self.lr, self.count_std = float(quantile), float(lr), float(count_std)

    def step(self, unclipped: int, expected_devices: float, rng: np.random.Generator) -> float:
        """New bound from how many of this round's updates were within the bound; returns it."""
        centred = unclipped - 0.5 * expected_devices  # sum_k (b_k - 1/2) over the expected cohort
        noisy = (centred + rng.normal(0.0, self.count_std)) / expected_devices + 0.5
        self.bound *= math.exp(-self.lr * (noisy - self.quantile))
        return self.bound
