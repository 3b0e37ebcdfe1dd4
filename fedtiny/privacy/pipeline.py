"""One run's DP state for the round loop: who is sampled, the clip bound, the noise, epsilon so far.

The simulation (and, next, the aggregator) drives it round by round; the maths lives in
clipping, central, ddgauss and accounting. Modes:
- "none" with a clip bound: clipping only, no noise, no epsilon (fedtiny simulate uses the round
  logic's bounds for that instead: fedtiny.bounds).
- "central": the aggregator clips every decoded update, sums with weight 1, adds N(0, (z C)^2)
  and divides by the expected devices per round m.
- "distributed": each device clips, rounds onto the shared grid and adds its discrete Gaussian
  share (fedtiny.privacy.ddgauss); the aggregator only sums modulo 2^b and decodes.
"""
from __future__ import annotations

import math

import numpy as np

from .. import bounds, rounds
from . import accounting, clipping, ddgauss
from .central import GaussianSumNoise
from .randomness import os_bytes, secure_generator

MODES = ("none", "central", "distributed")


def cohort_range(kind: str, clients: int, m: int) -> tuple[int, int]:
    """Devices per round the distributed noise and modulus are sized for: exactly m with fixed-size
    sampling; with Poisson, m -+ 3 standard deviations of the binomial count (outside: abandoned)."""
    if kind == "fixed":
        return m, m
    sd = math.sqrt(m * (1 - m / clients))
    return max(1, math.floor(m - 3 * sd)), min(clients, math.ceil(m + 3 * sd))


class PrivateRounds:
    def __init__(self, mode: str, *, clients: int, fraction: float, rounds_planned: int, dim: int,
                 clip_norm: float | None, adaptive_quantile: float | None = None,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 delta: float = 1e-5, sampling: str | None = None, bits: int | None = None,
                 test_seed: int | None = None, cohort: int | None = None):
        if mode not in MODES:
            raise ValueError(f"--dp must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.clients = int(clients)
        self.m = rounds.n_sampled(self.clients, fraction) if cohort is None else int(cohort)
        self.bound = clipping.check_bound(clip_norm) if clip_norm is not None else None
        # Production noise comes from the OS CSPRNG; a fixed seed exists only for tests.
        if test_seed is None:
            self.rng, self.random_bytes = secure_generator(), os_bytes
        else:
            self.rng = np.random.default_rng([test_seed, 0xD9])
            src = np.random.default_rng([test_seed, 0xB7])
            self.random_bytes = lambda n: src.bytes(n)
        self.adaptive = None
        self.stage = None
        self.params: ddgauss.Params | None = None
        self.accountant = None
        self.z = self.z_update = None
        if mode == "none":
            if noise_multiplier is not None or target_epsilon is not None or adaptive_quantile is not None:
                raise ValueError("--noise-multiplier, --target-epsilon and --adaptive-clip need --dp central or distributed")
            self.sampling = None
            return
        if self.bound is None:
            raise ValueError(f"--dp {mode} needs --clip-norm C (the L2 bound on one device's update; "
                             f"with --adaptive-clip it is the initial bound)")
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ValueError(f"--dp {mode} needs exactly one of --noise-multiplier z or --target-epsilon E")
        kind = sampling or "poisson"
        self.sampling = accounting.Sampling(kind, self.clients, self.m)
        self.round_sampling = self.sampling
        self.delta = float(delta)
        # --target-epsilon calibrates z up front for the planned rounds (it does not stop early).
        self.z = (float(noise_multiplier) if noise_multiplier is not None
                  else accounting.calibrate(self.sampling, target_epsilon, rounds_planned, self.delta))
        self.z_update = self.z
        if adaptive_quantile is not None:
            if mode == "distributed":
                raise ValueError("--adaptive-clip works with --dp central only (the grid is fixed by the clip)")
            count_std = self.m / 20  # Andrew et al. 2021's choice: sigma_b = m / 20
            self.adaptive = clipping.AdaptiveClip(self.bound, adaptive_quantile, count_std=count_std)
            self.z_update = clipping.update_noise_multiplier(self.z, count_std)
        self.accountant = accounting.Accountant(self.sampling, self.delta)
        if mode == "central":
            self.stage = GaussianSumNoise(self.z_update, self.m, self.rng)
        else:
            n_min, n_max = cohort_range(kind, self.clients, self.m)
            self.params = ddgauss.choose(dim, self.bound, self.z, n_min, bits, max_devices=n_max)
            self.z_accounted = self.params.z_effective

    # -- sampling --
    def select(self, seed: int, round_id: int) -> np.ndarray:
        if self.sampling is None or self.sampling.kind == "fixed":
            return rounds.sample_clients(self.clients, self.m / self.clients, seed=seed, round_id=round_id)
        rng = np.random.default_rng([int(seed), int(round_id), 0x9015])
        return np.flatnonzero(rng.random(self.clients) < self.sampling.q)

    # -- one round --
    def begin_round(self, population: int | None = None, cohort: int | None = None) -> None:
        """population, cohort: this round's fixed-size draw of `cohort` of `population` devices when it
        is not the run's (the aggregator samples from the devices alive at the round's start); the
        round is accounted with it and the mean divides by that cohort."""
        self.unclipped = 0
        self.devices = 0
        self.round_sampling = self.sampling
        if population is not None:
            if self.sampling is None or self.sampling.kind != "fixed":
                raise ValueError("a round's own population needs fixed-size sampling")
            self.round_sampling = accounting.Sampling("fixed", int(population), int(cohort))
        if self.mode == "distributed":
            self.total = ddgauss.new_sum(self.params)
        if self.stage is not None:
            self.stage.bound = self.bound
            self.stage.m = float(self.round_sampling.cohort)

    def round_bounds(self, max_samples: int | None) -> bounds.Bounds:
        """What the round logic enforces this round: the n_k cap and, under central DP, the DP clip
        bound (fixed or adaptive). One clipping rule for simulate and the aggregator: fedtiny.bounds
        scales each update (int8 or float32) to norm <= C as it enters the sum. Under distributed DP
        the device clips before rounding (device()), so the round logic does not clip again."""
        return bounds.Bounds(max_samples=max_samples, clip_norm=self.bound if self.mode == "central" else None)

    def device(self, delta: np.ndarray, rotation_seed: int) -> None:
        """Distributed DP, one device: clip its float32 delta, put it on the grid with its noise and
        add it to the modular sum."""
        if self.mode != "distributed":
            raise ValueError("device() is the distributed stage; central DP clips in the round logic (round_bounds)")
        clipped, norm = clipping.clip(delta, self.bound)
        self.unclipped += norm <= self.bound
        self.devices += 1
        vec = ddgauss.encode(self.params, clipped, rotation_seed, self.rng, self.random_bytes)
        ddgauss.add_mod(self.params, self.total, vec)

    def upload_bytes(self) -> int | None:
        return None if self.params is None else ddgauss.bytes_per_value(self.params) * self.params.padded

    def distributed_sum(self, rotation_seed: int) -> np.ndarray | None:
        """The decoded noisy sum, or None (the round is abandoned) if fewer devices than the noise
    needs, or more than the modulus holds, took part."""
        if not self.params.devices <= self.devices <= self.params.max_devices:
            return None
        return ddgauss.decode(self.params, self.total, rotation_seed)

    def z_spent(self) -> float:
        """The noise multiplier a released round is accounted with."""
        return self.z_accounted if self.mode == "distributed" else self.z

    def budget_allows(self, target_epsilon: float | None) -> bool:
        """Whether one more round (with this round's sampling) keeps epsilon <= target_epsilon."""
        if target_epsilon is None or self.accountant is None:
            return True
        return self.accountant.epsilon_if(self.z_spent(), self.round_sampling) <= target_epsilon * (1 + 1e-9)

    def end_round(self, released: bool, *, clipped: int | None = None, devices: int | None = None) -> dict:
        """Close the round's DP bookkeeping; returns its metrics columns. Central DP passes the
        round logic's counts: `devices` updates in the sum, `clipped` of them scaled down."""
        if clipped is not None:
            self.devices = int(devices)
            self.unclipped = self.devices - int(clipped)
        row = {}
        if self.bound is not None:
            row["clip_norm"] = self.bound
            row["clipped"] = self.devices - int(self.unclipped)
        if self.accountant is not None:
            if released:
                self.accountant.spend(self.z_spent(), self.round_sampling)
            row["epsilon"] = self.accountant.epsilon()
        if self.adaptive is not None:
            self.bound = self.adaptive.step(int(self.unclipped), self.round_sampling.cohort, self.rng)
        return row

    def summary(self) -> dict:
        s = {"dp": self.mode}
        if self.bound is not None:
            s["clip_norm_final"] = self.bound
        if self.accountant is not None:
            s.update(epsilon=self.accountant.epsilon(), delta=self.delta, noise_multiplier=self.z,
                     noise_multiplier_updates=self.z_update, sampling=self.sampling.kind,
                     devices_per_round=self.m, noise_std_on_mean=self.noise_std_on_mean())
        if self.params is not None:
            p = self.params
            s.update(dp_bits=p.bits, dp_gamma=p.gamma, dp_local_sigma2=p.sigma2, dp_min_devices=p.devices,
                     dp_max_devices=p.max_devices,
                     dp_z_effective=p.z_effective)
        return s

    def noise_std_on_mean(self) -> float:
        """Expected noise std per coordinate of the released mean delta (model units)."""
        if self.params is not None:
            return self.params.sum_noise_std(self.m) / self.m  # at the expected m devices
        return self.z_update * self.bound / self.m
