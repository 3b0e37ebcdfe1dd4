"""Central DP (trusted aggregator): Gaussian noise of std z*C on the sum of clipped updates.

The aggregator sees every clipped update; the noise protects what it releases (the model after
each round) against everyone else. Under DP every device weighs the same (weight 1; FedAvg's
n_k would make a device's influence depend on a number it chooses) and the mean divides by the
expected number of devices per round, not the number that arrived: the DP-FedAvg
fixed-denominator estimator (McMahan et al., ICLR 2018), so the sensitivity of the mean is
C / m whatever happens in the round.
"""
from __future__ import annotations

import numpy as np

from ..fedavg import Accumulator


class GaussianSumNoise:
    """A sum stage for rounds.Server: adds N(0, (z C)^2) per coordinate, divides by m."""

    def __init__(self, noise_multiplier: float, expected_devices: float, rng: np.random.Generator):
        if not noise_multiplier > 0:
            raise ValueError(f"--noise-multiplier must be positive, got {noise_multiplier}")
        if not expected_devices > 0:
            raise ValueError(f"expected devices per round must be positive, got {expected_devices}")
        self.z = float(noise_multiplier)
        self.m = float(expected_devices)
        self.rng = rng
        self.bound: float | None = None  # the clip bound of the round being closed (set by the caller)

    def noise(self, n: int) -> np.ndarray:
        if self.bound is None:
            raise ValueError("central DP: the round's clip bound is not set")
        return self.rng.normal(0.0, self.z * self.bound, n).astype(np.float32)

    def __call__(self, acc: Accumulator, rnd) -> float:
        acc.perturb(self.noise(acc.n_params))
        return self.m
