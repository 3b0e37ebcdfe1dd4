"""One integer grid for every device of a round, and sums modulo 2^b (docs/secagg.md "Grid").

The aggregator announces the clip bound C and the bits b with the round; with n the number of
devices selected, every device maps its delta onto the same grid:

    qmax = min(floor((2^(b-1) - 1) / n), 2^24)     each device's integers lie in [-qmax, qmax]
    step = C / qmax                                 the grid covers [-C, C], the clip's whole range

so n devices sum to at most n * qmax <= 2^(b-1) - 1 in magnitude: the sum modulo 2^b, read as a
centered integer, is the exact integer sum (no wrap). b = 16 while that leaves every device at
least QMAX_MIN_16 levels each side (n <= 127), else b = 32. On the wire each parameter is b/8
bytes: 2 at b = 16, 4 at b = 32.

The stages (DESIGN.md "The update pipeline"), each one C pass of fedtiny._core:
    device:     clip_scale -> quantize (unbiased stochastic rounding) -> [DP noise] -> mask
                (encode() fuses quantize and mask when no stage sits between them)
    aggregator: ModularSum.add (mod 2^b) -> unmask (ModularSum.mask with sign -1) -> decode
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import _core
from ..seeds import derive_seed

BITS = (16, 32)
QMAX_MIN_16 = 256           # b = 16 only while each device keeps at least this many levels each side
MAX_QMAX = 1 << 24          # float32 represents every integer of the grid exactly
SEED_BYTES = 32             # a mask seed, a ChaCha20 key (csrc/fedtiny.h "secure aggregation")
ROUND_KEY_BYTES = 32        # keys the device's stochastic-rounding stream


def choose_bits(devices: int) -> int:
    """16 while floor((2^15 - 1) / n) >= QMAX_MIN_16 (n <= 127 devices), else 32."""
    return 16 if (2 ** 15 - 1) // int(devices) >= QMAX_MIN_16 else 32


@dataclass(frozen=True)
class Grid:
    """The round's grid: clip bound, bits and the number of devices whose vectors may be summed."""

    clip: float
    bits: int
    devices: int

    def __post_init__(self):
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip bound must be a positive number, got {self.clip!r}")
        if self.bits not in BITS:
            raise ValueError(f"bits must be 16 or 32, got {self.bits!r}")
        if int(self.devices) < 1:
            raise ValueError(f"a grid needs at least one device, got {self.devices}")
        if (2 ** (self.bits - 1) - 1) // int(self.devices) < 1:
            raise ValueError(f"{self.devices} devices cannot share a {self.bits}-bit grid without wrapping: use bits=32")

    @classmethod
    def for_round(cls, clip: float, devices: int, bits: int | None = None) -> "Grid":
        return cls(float(clip), choose_bits(devices) if bits is None else int(bits), int(devices))

    @property
    def qmax(self) -> int:
        return min((2 ** (self.bits - 1) - 1) // self.devices, MAX_QMAX)

    @property
    def step(self) -> float:
        return float(np.float32(self.clip / self.qmax))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.bits == 16 else np.uint32)

    @property
    def bytes_per_param(self) -> int:
        return self.bits // 8

    def vector_bytes(self, n_params: int) -> int:
        return int(n_params) * self.bytes_per_param

    def parse(self, payload: bytes | memoryview, n_params: int) -> np.ndarray:
        """A masked vector from its wire bytes (little-endian); ValueError if the length is not n_params * b/8."""
        mv = memoryview(payload).cast("B")
        if len(mv) != self.vector_bytes(n_params):
            raise ValueError(f"masked vector of {len(mv)} bytes: {n_params} parameters at {self.bits} bits "
                             f"need {self.vector_bytes(n_params)}")
        return np.frombuffer(mv, dtype=self.dtype.newbyteorder("<")).astype(self.dtype, copy=False)


def derived_round_key(seed: int, round_id: int, device: int) -> bytes:
    """A device's stochastic-rounding key derived from the run's seed (docs/secagg.md "Grid"):
    what `fedtiny simulate --secagg` and `fedtiny client` use, so a network run reproduces a
    simulation bit for bit. The aggregator can derive it too; it never sees the grid vector."""
    return struct.pack("<8I", *(derive_seed(seed, round_id, device, 3, i) for i in range(8)))


# --- device stages -----------------------------------------------------------------------------

def clip_scale(delta: np.ndarray, clip: float) -> float:
    """min(1, C / ||delta||): the factor that brings the delta inside the L2 ball of radius C."""
    norm = _core.l2norm_f32(delta)
    return 1.0 if norm <= clip else float(clip / norm)


def _masks(seeds: Sequence[bytes], signs: Sequence[int]) -> tuple[bytes, np.ndarray]:
    if len(seeds) != len(signs):
        raise ValueError(f"{len(seeds)} mask seeds but {len(signs)} signs")
    if any(len(s) != SEED_BYTES for s in seeds):
        raise ValueError(f"every mask seed is {SEED_BYTES} bytes")
    return b"".join(seeds), np.asarray(signs, dtype=np.int8)


def quantize(delta: np.ndarray, grid: Grid, round_key: bytes) -> np.ndarray:
    """The device's grid vector (clip, then unbiased stochastic rounding), no mask: q mod 2^b."""
    return encode(delta, grid, round_key, (), ())


def encode(delta: np.ndarray, grid: Grid, round_key: bytes, seeds: Sequence[bytes], signs: Sequence[int],
           *, offset: int = 0) -> np.ndarray:
    """clip -> grid -> + sum_j sign_j * mask(seed_j), modulo 2^b, in one C pass: the masked vector."""
    if not isinstance(delta, np.ndarray) or delta.dtype != np.float32 or delta.ndim != 1:
        raise ValueError("delta must be a 1-D float32 array")
    delta = np.ascontiguousarray(delta)
    out = np.empty(delta.size, dtype=grid.dtype)
    packed, sg = _masks(seeds, signs)
    _core.secagg_encode(delta, offset, clip_scale(delta, grid.clip), grid.step, grid.qmax, round_key, packed, sg, out)
    return out


def mask(vector: np.ndarray, seeds: Sequence[bytes], signs: Sequence[int], *, offset: int = 0) -> None:
    """vector += sum_j sign_j * mask(seed_j) modulo 2^b, in place (sign -1 removes a mask)."""
    if not seeds:
        return
    packed, sg = _masks(seeds, signs)
    _core.secagg_mask(vector, offset, packed, sg)


# --- aggregator stages -------------------------------------------------------------------------

class ModularSum:
    """The aggregator's sum of masked vectors modulo 2^b: one b-bit vector, whatever the number of devices."""

    def __init__(self, n_params: int, grid: Grid):
        self.grid = grid
        self.n_params = int(n_params)
        self.sum = np.zeros(self.n_params, dtype=grid.dtype)
        self.count = 0

    def add(self, vector: np.ndarray) -> None:
        if vector.dtype != self.grid.dtype or vector.shape != self.sum.shape:
            raise ValueError(f"vector must be {self.grid.dtype} of {self.n_params} values")
        _core.secagg_add(self.sum, np.ascontiguousarray(vector))
        self.count += 1

    def unmask(self, seeds: Sequence[bytes], signs: Sequence[int]) -> None:
        """Remove masks: the device added sign * mask(seed), so this subtracts exactly that."""
        mask(self.sum, seeds, [-int(s) for s in signs])

    def centered(self) -> np.ndarray:
        """The sum as signed integers (int64): values >= 2^(b-1) are the negative ones."""
        s = self.sum.astype(np.int64)
        s[s >= 2 ** (self.grid.bits - 1)] -= 2 ** self.grid.bits
        return s

    def mean(self, devices: int) -> np.ndarray:
        """float32 mean delta of `devices` unmasked vectors: centered sum * step / devices."""
        out = np.empty(self.n_params, dtype=np.float32)
        _core.secagg_decode(self.sum, self.grid.step / int(devices), out)
        return out

    @property
    def nbytes(self) -> int:
        return int(self.sum.nbytes)
