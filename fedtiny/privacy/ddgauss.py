"""Distributed DP for secure aggregation: the distributed discrete Gaussian (DDGauss).

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021 (Algorithm 1). The aggregator is not trusted: each device adds
its own share of integer noise, so the sum that secure aggregation reveals already carries the
target noise. Device stage, in order:

1. clip the delta to L2 norm c (fedtiny.privacy.clipping);
2. pad to a power of two P and rotate with a randomized Hadamard transform H D / sqrt(P) (D a
   public random +-1 diagonal per round), so no coordinate carries much more than c / sqrt(P)
   and the modular sum rarely wraps;
3. scale by 1/gamma and round to integers with randomized rounding, repeated until the rounded
   vector's norm is <= Delta_2 (conditional rounding, their Thm. 2: Delta_2^2 = min((c/g +
   sqrt(P))^2, c^2/g^2 + P/4 + sqrt(2 ln(1/beta)) (c/g + sqrt(P)/2)));
4. add discrete Gaussian noise N_Z(0, sigma^2) per coordinate with n sigma^2 >= (z Delta_2)^2
   for the n devices whose noise is in the sum (the exact sampler in csrc/dgauss.c, bytes from
   the OS CSPRNG);
5. reduce modulo 2^b.
The aggregator sums modulo 2^b (plainly here; secure aggregation's masks cancel in the same
sum), maps to [-2^(b-1), 2^(b-1)), multiplies by gamma, rotates back and crops.

gamma from b (their Sec. 4.4): 2^b = 2k sqrt(rho (c n)^2 / P + n (gamma^2 / 4 + s^2)) / gamma with
k = 4 standard deviations, rho = 1 and s the local noise std in model units. b itself, when not
given, is the smallest b whose discretization costs at most 5% more noise on the sum than
central DP at the same z: gamma sqrt((z Delta_2)^2 + n / 4) <= 1.05 z c.

Privacy: the sum of n discrete Gaussians is not exactly one; their Theorem 1 bounds the RDP by
the Gaussian's alpha (Delta_2 / (sqrt(n) sigma))^2 / 2 plus tau P, tau = 10 sum_{k<n}
exp(-2 pi^2 sigma^2 k / (k+1)). fedtiny refuses parameters with tau P > 1e-9 (at the sigmas
used here tau underflows to 0) and accounts the round as a Gaussian of noise multiplier
z_eff = sqrt(n) sigma / Delta_2 with dp-accounting, as for central DP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import _core
from . import clipping
from .randomness import ByteSource, os_bytes

K_STDDEVS = 4.0
BETA = math.exp(-0.5)
MAX_INFLATION = 1.05
MAX_SIGMA2 = 2 ** 40  # csrc/dgauss.c's range
MAX_DEN = 2 ** 24


def rounded_norm_bound(norm: float, dim: int, beta: float = BETA) -> float:
    """Delta_2 after conditional randomized rounding of a vector of L2 norm <= norm in dim coordinates."""
    b1 = norm + math.sqrt(dim)
    if beta == 0:
        return b1
    b2 = math.sqrt(norm ** 2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2))
    return min(b1, b2)


def _rational_up(x: float) -> tuple[int, int]:
    """num / den >= x, at most 1e-6 above it, with den the smallest power of two that allows it
    (small integers keep csrc/dgauss.c on its 64-bit path)."""
    den = 1
    while den < MAX_DEN and (math.ceil(x * den) / den - x) > 1e-6 * x:
        den *= 2
    num = math.ceil(x * den)
    if not 1 <= num <= MAX_SIGMA2:
        raise ValueError(f"distributed DP: local noise variance {x:.3g} (grid units) is outside the sampler's "
                         f"range [2^-24, 2^40]: use fewer --dp-bits")
    return num, den


@dataclass(frozen=True)
class Params:
    dim: int          # model parameters
    padded: int       # P, a power of two >= dim
    clip: float       # c
    z: float          # noise multiplier asked for, on the rounded sensitivity Delta_2
    devices: int      # n: the fewest devices whose noise is in a released sum
    max_devices: int  # the most devices the modulus is sized for
    bits: int         # b: the modulus is 2^b
    gamma: float      # grid step in model units
    delta2: float     # Delta_2 in grid units
    sigma2_num: int   # local variance sigma^2 = num / den, grid units (rounded up)
    sigma2_den: int

    @property
    def sigma2(self) -> float:
        return self.sigma2_num / self.sigma2_den

    @property
    def z_effective(self) -> float:
        """The sum's noise multiplier on Delta_2 (>= z: the variance was rounded up)."""
        return math.sqrt(self.devices * self.sigma2) / self.delta2

    @property
    def tau(self) -> float:
        s2 = self.sigma2
        return 10 * sum(math.exp(-2 * math.pi ** 2 * s2 * k / (k + 1)) for k in range(1, min(self.devices, 10_000)))

    def sum_noise_std(self, devices: float | None = None) -> float:
        """Std per coordinate, in model units, of what the sum of `devices` devices (default: the
        fewest) carries beyond their clipped updates: their noise and (at most) their rounding error."""
        n = self.devices if devices is None else devices
        return self.gamma * math.sqrt(n * self.sigma2 + n / 4)


def _for_bits(dim: int, clip: float, z: float, devices: int, max_devices: int, bits: int) -> Params | None:
    padded = 1 << max(0, (dim - 1).bit_length())
    n, n_sum = devices, max_devices
    room = 4.0 ** bits / (4 * K_STDDEVS ** 2) - n_sum / 4
    if room <= 0:
        return None
    s = z * clip / math.sqrt(n)  # first guess of the local std (model units): Delta_2 ~ c / gamma
    gamma = delta2 = 0.0
    for _ in range(50):  # fixed point: gamma depends on s, s on Delta_2(gamma)
        gamma = math.sqrt((clip * n_sum) ** 2 / padded + n_sum * s ** 2) / math.sqrt(room)
        delta2 = rounded_norm_bound(clip / gamma, padded)
        s_new = z * delta2 * gamma / math.sqrt(n)
        if abs(s_new - s) <= 1e-12 * s:
            break
        s = s_new
    sigma2 = (z * delta2) ** 2 / n
    if sigma2 > MAX_SIGMA2:
        return None
    num, den = _rational_up(sigma2)
    return Params(dim, padded, clip, z, n, n_sum, bits, gamma, delta2, num, den)


def choose(dim: int, clip: float, z: float, devices: int, bits: int | None = None,
           max_devices: int | None = None) -> Params:
    """DDGauss parameters for d parameters, clip c, noise multiplier z, at least `devices` and at most
    `max_devices` (default: the same) devices per sum, and b (or the smallest b that fits)."""
    max_devices = devices if max_devices is None else int(max_devices)
    if max_devices < devices:
        raise ValueError(f"max_devices {max_devices} is below devices {devices}")
    clipping.check_bound(clip)
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"--noise-multiplier must be positive, got {z}")
    if devices < 1 or dim < 1:
        raise ValueError("distributed DP needs at least one device and one parameter")
    if bits is not None:
        if not 2 <= bits <= 32:
            raise ValueError(f"--dp-bits must be in [2, 32], got {bits}")
        p = _for_bits(dim, clip, z, devices, max_devices, bits)
        if p is None:
            raise ValueError(f"--dp-bits {bits} cannot hold the sum of {devices} devices at {K_STDDEVS:g} standard "
                             f"deviations within the sampler's range: use another --dp-bits")
    else:
        p = None
        for b in range(4, 33):
            q = _for_bits(dim, clip, z, devices, max_devices, b)
            if q is not None and q.sum_noise_std() <= MAX_INFLATION * z * clip:
                p = q
                break
        if p is None:
            raise ValueError(f"distributed DP: no modulus up to 2^32 keeps the discretization within "
                             f"{MAX_INFLATION - 1:.0%} of central noise for {devices} devices at z = {z:g}: "
                             f"set --dp-bits")
    if p.tau * p.padded > 1e-9:
        raise ValueError(f"distributed DP: local noise sigma^2 = {p.sigma2:.3g} is too small for the sum of "
                         f"{devices} discrete Gaussians to be accounted as a Gaussian (tau d = {p.tau * p.padded:.2g}): "
                         f"use more --dp-bits")
    return p


def _fwht(a: np.ndarray) -> None:
    """Unnormalized fast Walsh-Hadamard transform in place (length a power of two)."""
    h = 1
    n = a.size
    while h < n:
        v = a.reshape(-1, 2, h)
        x = v[:, 0, :].copy()
        v[:, 0, :] += v[:, 1, :]
        v[:, 1, :] = x - v[:, 1, :]
        h *= 2


def _signs(p: Params, rotation_seed: int) -> np.ndarray:
    """D: the round's public random +-1 diagonal (every device and the aggregator derive the same)."""
    return np.random.default_rng([int(rotation_seed), 0xDD6A]).integers(0, 2, p.padded).astype(np.float64) * 2 - 1


def rotate(p: Params, x: np.ndarray, rotation_seed: int) -> np.ndarray:
    y = np.zeros(p.padded)
    y[: x.size] = x
    y *= _signs(p, rotation_seed)
    _fwht(y)
    y /= math.sqrt(p.padded)
    return y


def unrotate(p: Params, y: np.ndarray, rotation_seed: int) -> np.ndarray:
    x = np.array(y, dtype=np.float64)
    _fwht(x)
    x /= math.sqrt(p.padded)
    x *= _signs(p, rotation_seed)
    return x[: p.dim]


def round_conditional(p: Params, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased randomized rounding of x (grid units) to integers, redrawn until the L2 norm is <= Delta_2."""
    floor = np.floor(x)
    frac = x - floor
    for _ in range(1000):  # each try succeeds with probability >= 1 - beta (about 0.39)
        r = floor + (rng.random(x.size) < frac)
        if float(np.dot(r, r)) <= p.delta2 ** 2:
            return r
    raise RuntimeError("distributed DP: conditional rounding failed 1000 times (the input was not clipped)")


def encode(p: Params, clipped: np.ndarray, rotation_seed: int, rng: np.random.Generator,
           random_bytes: ByteSource = os_bytes) -> np.ndarray:
    """One device's clipped delta -> its integer vector modulo 2^b (uint32 of P values), noise included.

    rng draws the randomized rounding; random_bytes feeds the discrete Gaussian (the OS CSPRNG
    unless a test passes a seeded source).
    """
    if clipping.l2_norm(clipped) > p.clip * (1 + 1e-6):
        raise ValueError(f"distributed DP: the update's norm {clipping.l2_norm(clipped):.6g} is above the clip "
                         f"{p.clip:g}: clip it first")
    r = round_conditional(p, rotate(p, clipped.astype(np.float64), rotation_seed) / p.gamma, rng)
    noise = np.empty(p.padded, dtype=np.int64)
    _core.dgauss_s64(noise, p.sigma2_num, p.sigma2_den, random_bytes)
    return ((r.astype(np.int64) + noise) & ((1 << p.bits) - 1)).astype(np.uint32)


def new_sum(p: Params) -> np.ndarray:
    """The aggregator's modular sum, zero: uint32 of P values (any b <= 32 fits)."""
    return np.zeros(p.padded, dtype=np.uint32)


def add_mod(p: Params, total: np.ndarray, vector: np.ndarray) -> None:
    """total = (total + vector) modulo 2^b in place (uint32 of P values): what secure aggregation
    computes; the C kernel secagg_add, secure aggregation's own sum (csrc/secagg.c)."""
    _core.secagg_add(total, vector, p.bits)


def decode(p: Params, total: np.ndarray, rotation_seed: int) -> np.ndarray:
    """The modular sum -> the noisy sum of the devices' clipped deltas, float32, model units: the C
    kernel secagg_decode reads it as centered integers in [-2^(b-1), 2^(b-1)) times gamma."""
    centred = np.empty(p.padded, dtype=np.float32)
    _core.secagg_decode(total, p.gamma, centred, p.bits)
    return unrotate(p, centred, rotation_seed).astype(np.float32)


def bytes_per_value(p: Params) -> int:
    return 2 if p.bits <= 16 else 4
