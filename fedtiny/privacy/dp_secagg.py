"""Distributed DP inside SecAgg+ rounds: `fedtiny aggregate --secagg --dp distributed` (docs/privacy.md).

The distributed discrete Gaussian (ddgauss.py) is the device stage between the grid and the masks:
each device clips its delta, rotates, rounds and adds its N_Z(0, sigma^2) share (exact C sampler,
bytes from the OS CSPRNG), reduces modulo 2^b and only then masks (secagg.Device.mask_vector).
The aggregator unmasks the sum exactly as without DP and decodes it with ddgauss.decode.

What travels: SECAGG_SETUP's byte 41 carries b (the DDGauss modulus, 2..32; 0 = no DP) and bytes
44..47 the noise multiplier z as float32 (both were reserved). Everything else the device derives
from fields already sent, deterministically, as the aggregator does (`params`):

    ddgauss.choose(dim, clip, z, devices = min_survivors, bits = b, max_devices = n)

so sigma^2 is sized for the fewest devices whose noise can be in an unmasked sum (SecAgg abandons a
round with fewer than min_survivors masked vectors), the modulus for all n selected; the rotation's
public signs come from the round's 16 random session bytes. The masked vector holds P (the padded
dimension) values of 16 bits (b <= 16) or 32 bits.

Accounting (aggregator side, `SecAggDP`): as `aggregate --dp central` (aggregator_dp.py), each round
is the aggregator's fixed-size draw of m of the A devices alive, SampledWithoutReplacementDpEvent(A,
m, Gaussian(z_eff / 2)), replace-one neighbours, with z_eff = sqrt(min_survivors) sigma / Delta_2 >= z
(ddgauss.Params.z_effective): the noise the released sum is guaranteed to carry.
"""
from __future__ import annotations

import numpy as np

from .. import rounds
from . import accounting, clipping, ddgauss
from .randomness import ByteSource, os_bytes


def wire_bits(bits: int) -> int:
    """The SecAgg grid's word for a DDGauss modulus 2^b: 16-bit words while b <= 16, else 32.
    Masks cancel modulo 2^16 (or 2^32), and 2^b divides it, so the sum modulo 2^b is exact."""
    return 16 if bits <= 16 else 32


def z_on_wire(z: float) -> float:
    """z as SETUP carries it (float32): the aggregator sizes the noise with this value too."""
    return float(np.float32(z))


def params(dim: int, clip: float, z: float, min_survivors: int, selected: int, bits: int | None) -> ddgauss.Params:
    """The round's DDGauss parameters (ValueError if none fit): what the aggregator announces (bits
    None: the smallest b within 5% of central noise) and what each device recomputes (bits given)."""
    return ddgauss.choose(int(dim), float(clip), float(z), int(min_survivors), bits, max_devices=int(selected))


def rotation_seed(session: bytes) -> int:
    """The round's public rotation seed: its 16 random session bytes (fresh per round)."""
    return int.from_bytes(session, "little")


def rounding_rng(round_key: bytes) -> np.random.Generator:
    """The device's randomized-rounding stream from its 32-byte round key (derived from the run's
    seed as the grid's rounding is, docs/secagg.md "Grid"); the noise does not come from it."""
    return np.random.default_rng(np.frombuffer(round_key, dtype="<u4").astype(np.uint64))


def device_vector(p: ddgauss.Params, session: bytes, delta: np.ndarray, round_key: bytes,
                  random_bytes: ByteSource = os_bytes) -> np.ndarray:
    """A device's DDGauss vector before masking: clip, rotate, round, + its discrete Gaussian share,
    modulo 2^b, as P words of wire_bits(b). random_bytes feeds the noise (the OS CSPRNG)."""
    if delta.size != p.dim:
        raise ValueError(f"distributed DP: a delta of {delta.size} values for a model of {p.dim}")
    clipped, _ = clipping.clip(delta, p.clip)
    v = ddgauss.encode(p, clipped, rotation_seed(session), rounding_rng(round_key), random_bytes)
    return v.astype(np.uint16) if wire_bits(p.bits) == 16 else v


def decode_sum(p: ddgauss.Params, session: bytes, total: np.ndarray) -> np.ndarray:
    """The unmasked modular sum (P words) -> the noisy sum of the survivors' clipped deltas (float32)."""
    return ddgauss.decode(p, np.ascontiguousarray(total, dtype=np.uint32), rotation_seed(session))


class SecAggDP:
    """One `fedtiny aggregate --secagg --dp distributed` run's DP state: the round's parameters,
    epsilon, the budget. The interface of aggregator_dp.AggregatorDP (the aggregator calls either)."""

    stage = None   # no noise on the aggregator: the devices add it

    def __init__(self, cfg, fleet: int, dim: int):
        self.cfg = cfg
        self.dim = int(dim)
        self.target = cfg.target_epsilon
        self.delta = float(cfg.delta)
        self.clip = float(cfg.clip_norm)
        m = rounds.n_sampled(fleet, cfg.fraction, cfg.min_clients)
        self.sampling = accounting.Sampling("fixed", max(fleet, m), m)
        z = (cfg.noise_multiplier if cfg.noise_multiplier is not None
             else accounting.calibrate(self.sampling, cfg.target_epsilon, cfg.rounds, self.delta))
        self.z = z_on_wire(z)
        self.accountant = accounting.Accountant(self.sampling, self.delta)
        self.round_sampling = self.sampling
        self.round_params: ddgauss.Params | None = None
        self.spent_detail = ""
        self.secagg_config = cfg.secagg_config()
        self.plan(m)   # every refusal (no modulus fits, sigma out of range) before the first round

    def plan(self, selected: int) -> ddgauss.Params:
        _, _, min_survivors, _ = self.secagg_config.for_round(selected)
        return params(self.dim, self.clip, self.z, min_survivors, selected, None)

    def bounds(self):
        from .. import bounds
        return bounds.Bounds(max_samples=self.cfg.max_samples, clip_norm=None)   # the devices clip

    def resume(self, metrics: list[dict]) -> None:
        for row in metrics:
            if row.get("dp_released"):
                self.accountant.spend(row["noise_multiplier"],
                                      accounting.Sampling("fixed", row["dp_population"], row["dp_cohort"]))

    def open_round(self, alive: int, cohort: int) -> bool:
        self.round_sampling = accounting.Sampling("fixed", int(alive), int(cohort))
        self.round_params = self.plan(cohort)
        z_eff = self.round_params.z_effective
        if self.target is not None and self.accountant.epsilon_if(z_eff, self.round_sampling) > self.target * (1 + 1e-9):
            acc = self.accountant
            self.spent_detail = (f"privacy budget spent: epsilon {acc.epsilon():.4f} after {acc.rounds} round(s); "
                                 f"one more of {cohort} of {alive} devices would make it "
                                 f"{acc.epsilon_if(z_eff, self.round_sampling):.4f} > --target-epsilon {self.target:g}")
            return False
        return True

    def close_round(self, released: bool, devices: int, clipped: int) -> dict:
        p = self.round_params
        s = self.round_sampling
        if released:
            self.accountant.spend(p.z_effective, s)
        return {"dp_population": s.population, "dp_cohort": s.cohort, "dp_released": bool(released),
                "noise_multiplier": p.z_effective, "dp_bits": p.bits, "dp_min_devices": p.devices,
                "epsilon": self.accountant.epsilon(), "clip_norm": self.clip, "clipped": 0}

    def final_line(self) -> str:
        acc = self.accountant
        line = (f"differential privacy (distributed discrete Gaussian under SecAgg, fixed-size sampling, "
                f"uniform weights): epsilon {acc.epsilon():.4f} at delta {self.delta:g} after {acc.rounds} released "
                f"round(s), z = {self.z:.4f} (noise sized for the minimum survivors), clip {self.clip:.4g}")
        return line + (f"; stopped: {self.spent_detail}" if self.spent_detail else "")

    def summary(self) -> dict:
        s = {"dp": "distributed", "epsilon": self.accountant.epsilon(), "delta": self.delta, "noise_multiplier": self.z,
             "sampling": "fixed", "clip_norm_final": self.clip, "devices_per_round": self.round_sampling.cohort,
             "population": self.round_sampling.population, "target_epsilon": self.target}
        p = self.round_params
        if p is not None:
            s.update(dp_bits=p.bits, dp_gamma=p.gamma, dp_local_sigma2=p.sigma2, dp_min_devices=p.devices,
                     dp_max_devices=p.max_devices, dp_z_effective=p.z_effective, dp_padded=p.padded)
        return s


def check_words(bits: int, grid_bits: int) -> None:
    if grid_bits != wire_bits(bits):
        raise ValueError(f"distributed DP: a {bits}-bit modulus travels in {wire_bits(bits)}-bit words, "
                         f"not {grid_bits}")

