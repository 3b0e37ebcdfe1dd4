"""Differential privacy on the UDP aggregator: `fedtiny aggregate --dp central` (docs/privacy.md).

The aggregator is trusted (it sees every clipped update); what it releases, the model after each
round, is (epsilon, delta)-DP at the device level. The round's logic is `fedtiny simulate --dp
central --dp-sampling fixed`'s, the same objects (pipeline.PrivateRounds):

- sampling: the aggregator's own draw, m = max(--min-clients, round(--fraction A)) of the A devices
  alive when the round opens, without replacement (rounds.sample_clients). Each round is accounted
  as that draw: SampledWithoutReplacementDpEvent(A, m, Gaussian(z / 2)), replace-one neighbours
  (accounting.py). Which devices are alive does not depend on their data.
- weights: uniform, every device weighs 1 (its n_k is still checked against --max-samples).
- clipping: one rule, fedtiny.bounds in the round logic (the aggregator's --clip-norm), with the DP
  bound C (fixed, or adaptive with --adaptive-clip).
- noise: N(0, (z C)^2) per coordinate on the sum before the server step; the mean divides by m
  whatever arrives (the fixed denominator). The round waits for all m devices (or its deadline).
- budget: --target-epsilon without --noise-multiplier calibrates z for --rounds rounds of m of the
  N keyed devices; with or without it, no round is opened whose release would take epsilon above
  the target: the run stops there ("privacy budget spent").

`--dp distributed` runs with `--secagg` only (fedtiny.privacy.dp_secagg: the devices add the noise
inside SecAgg+ rounds); `--dp central` with `--secagg` is refused.
"""
from __future__ import annotations

import argparse
import math

from .. import bounds, rounds
from .pipeline import PrivateRounds

MODES = ("none", "central", "distributed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `fedtiny simulate`'s DP group that apply to the aggregator, with its names."""
    g = p.add_argument_group("differential privacy (docs/privacy.md)")
    g.add_argument("--dp", default="none", choices=MODES,
                   help="central: this aggregator clips every update to --clip-norm and adds Gaussian noise "
                        "to the sum (a trusted aggregator); distributed (with --secagg): each device adds its share of discrete Gaussian noise before "
                        "masking, the aggregator sees only the noisy sum; none (default)")
    g.add_argument("--adaptive-clip", type=float, default=None, metavar="QUANTILE",
                   help="central DP: move the bound toward this quantile of update norms (Andrew et al. 2021), "
                        "starting at --clip-norm")
    g.add_argument("--noise-multiplier", type=float, default=None, metavar="Z", help="noise std / clip bound")
    g.add_argument("--target-epsilon", type=float, default=None, metavar="E",
                   help="stop before a round would take epsilon above E; without --noise-multiplier, also "
                        "calibrate Z so that --rounds rounds of the whole keyed fleet spend E")
    g.add_argument("--delta", type=float, default=1e-5, help="delta of (epsilon, delta)-DP (default %(default)s)")


def check(cfg) -> None:
    """Every refused combination, one line each (ValueError: the CLI prints it and exits 2)."""
    dp = cfg.dp
    if dp not in MODES:
        raise ValueError(f"--dp must be one of {', '.join(MODES)}, got {dp!r}")
    if dp == "distributed" and not getattr(cfg, "secagg", False):
        raise ValueError("--dp distributed needs --secagg (the devices' noise shares are private only inside "
                         "a secure sum; docs/privacy.md): add --secagg, or use --dp central")
    if dp == "central" and getattr(cfg, "secagg", False):
        raise ValueError("--dp central does not combine with --secagg (under SecAgg the aggregator is not trusted "
                         "with the sum; docs/privacy.md): use --dp distributed with --secagg")
    if dp == "distributed":
        if cfg.adaptive_clip is not None:
            raise ValueError("--adaptive-clip works with --dp central only (the devices' grid is fixed by the clip)")
        if getattr(cfg, "secagg_bits", None) is not None:
            raise ValueError("--secagg-bits does not apply with --dp distributed (the modulus 2^b is chosen from "
                             "the clip, the devices and z): drop it")
    if dp == "none":
        given = [f for f, v in (("--noise-multiplier", cfg.noise_multiplier), ("--target-epsilon", cfg.target_epsilon),
                                ("--adaptive-clip", cfg.adaptive_clip)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --dp central")
        return
    if not cfg.clip_norm:
        raise ValueError(f"--dp {dp} needs --clip-norm C > 0 (the L2 bound on one device's update)")
    if cfg.noise_multiplier is None and cfg.target_epsilon is None:
        raise ValueError(f"--dp {dp} needs --noise-multiplier Z, --target-epsilon E, or both")
    if not 0 < cfg.delta < 1:
        raise ValueError(f"--delta must be in (0, 1), got {cfg.delta}")
    if cfg.target_epsilon is not None and not (math.isfinite(cfg.target_epsilon) and cfg.target_epsilon > 0):
        raise ValueError(f"--target-epsilon must be a positive number, got {cfg.target_epsilon}")


class AggregatorDP:
    """One aggregator run's DP state: the round's bounds and sum stage, epsilon, the budget."""

    def __init__(self, cfg, fleet: int, *, test_seed: int | None = None):
        """cfg: the AggregateConfig (checked); fleet: N, the keyed devices (--keys)."""
        self.cfg = cfg
        self.target = cfg.target_epsilon
        m = rounds.n_sampled(fleet, cfg.fraction, cfg.min_clients)
        self.priv = PrivateRounds("central", clients=fleet, fraction=cfg.fraction, cohort=m, rounds_planned=cfg.rounds,
                                  dim=0, clip_norm=cfg.clip_norm, adaptive_quantile=cfg.adaptive_clip,
                                  noise_multiplier=cfg.noise_multiplier,
                                  target_epsilon=cfg.target_epsilon if cfg.noise_multiplier is None else None,
                                  delta=cfg.delta, sampling="fixed", test_seed=test_seed)
        self.spent_detail = ""

    @property
    def stage(self):
        return self.priv.stage

    def bounds(self) -> bounds.Bounds:
        return self.priv.round_bounds(self.cfg.max_samples)

    def resume(self, metrics: list[dict]) -> None:
        """Replay the accountant (and the adaptive bound) from a checkpoint's metrics rows."""
        for row in metrics:
            if "dp_population" not in row:
                continue
            self.priv.begin_round(row["dp_population"], row["dp_cohort"])
            if row.get("dp_released"):
                self.priv.accountant.spend(row["noise_multiplier"], self.priv.round_sampling)
            if self.priv.adaptive is not None and "clip_norm_next" in row:
                self.priv.adaptive.bound = self.priv.bound = row["clip_norm_next"]

    def open_round(self, alive: int, cohort: int) -> bool:
        """This round's draw of `cohort` of `alive` devices; False (nothing opened) if releasing it
        would take epsilon above --target-epsilon."""
        self.priv.begin_round(alive, cohort)
        if not self.priv.budget_allows(self.target):
            acc = self.priv.accountant
            self.spent_detail = (f"privacy budget spent: epsilon {acc.epsilon():.4f} after {acc.rounds} round(s); "
                                 f"one more of {cohort} of {alive} devices would make it "
                                 f"{acc.epsilon_if(self.priv.z, self.priv.round_sampling):.4f} > "
                                 f"--target-epsilon {self.target:g}")
            return False
        return True

    def close_round(self, released: bool, devices: int, clipped: int) -> dict:
        """The round's metrics columns: epsilon, clip_norm, clipped, and what a restart replays."""
        s = self.priv.round_sampling
        row = {"dp_population": s.population, "dp_cohort": s.cohort, "dp_released": bool(released),
               "noise_multiplier": self.priv.z}
        row.update(self.priv.end_round(released, devices=devices, clipped=clipped))
        if self.priv.adaptive is not None:
            row["clip_norm_next"] = self.priv.bound
        return row

    def final_line(self) -> str:
        p = self.priv
        line = (f"differential privacy (central, fixed-size sampling, uniform weights): epsilon "
                f"{p.accountant.epsilon():.4f} at delta {p.delta:g} after {p.accountant.rounds} released round(s), "
                f"z = {p.z:.4f}, clip {p.bound:.4g}")
        return line + (f"; stopped: {self.spent_detail}" if self.spent_detail else "")

    def summary(self) -> dict:
        s = self.priv.summary()
        s.update(devices_per_round=self.priv.round_sampling.cohort, population=self.priv.round_sampling.population,
                 target_epsilon=self.target)
        return s


def create(cfg, fleet: int, dim: int = 0):
    """AggregatorDP (central), dp_secagg.SecAggDP (distributed, dim: the model's parameters) or None."""
    check(cfg)
    if cfg.dp == "none":
        return None
    if cfg.dp == "distributed":
        from .dp_secagg import SecAggDP
        return SecAggDP(cfg, fleet, dim)
    return AggregatorDP(cfg, fleet, test_seed=getattr(cfg, "dp_test_seed", None))
