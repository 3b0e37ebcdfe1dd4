"""In-place FedAvg: acc += n_k * update_k as updates (or their chunks) arrive; w += acc / sum n_k.

Memory is one float32 vector of n_params whatever the number of updates: an Int8Update or a
LowbitUpdate (4-bit, 2-bit, rotated 1-bit) is dequantized and added in one C pass, never through
a float32 copy (the rotated codec undoes its rotation one 512-value block at a time on the stack).
"""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .bounds import scaled_weight
from .codec import BLOCK_BYTES, QK, Int8Update, LowbitUpdate, check_blocks


def _check_weight(weight: float) -> float:
    w = float(weight)
    if not math.isfinite(w) or w <= 0:
        raise ValueError(f"weight must be a positive finite number (the client's sample count), got {weight!r}")
    return w


class Accumulator:
    """Weighted sum of client updates; `apply` turns it into the FedAvg step and resets it."""

    def __init__(self, n_params: int):
        if int(n_params) <= 0:
            raise ValueError(f"n_params must be positive, got {n_params}")
        self.n_params = int(n_params)
        self._acc = np.zeros(self.n_params, dtype=np.float32)
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: Int8Update | LowbitUpdate | np.ndarray, weight: float, scale: float = 1.0) -> None:
        """Add one whole update with weight n_k (its sample count), its values times `scale`
        (the clipping factor of fedtiny.bounds times, in an asynchronous buffer, the staleness
        weight s(tau) of fedtiny.rounds; the denominator still counts n_k)."""
        w = _check_weight(weight)
        s = float(scale)
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise ValueError(f"scale must be in [0, 1] (clipping factor x staleness weight), got {scale!r}")
        w_acc = w if s == 1.0 else scaled_weight(w, s)
        if isinstance(update, Int8Update):
            if len(update) != self.n_params:
                raise ValueError(f"update has {len(update)} parameters, the accumulator {self.n_params}")
            _core.fedavg_acc_q8(self._acc, 0, update.blocks, self.n_params, w_acc)
        elif isinstance(update, LowbitUpdate):
            if len(update) != self.n_params:
                raise ValueError(f"update has {len(update)} parameters, the accumulator {self.n_params}")
            _core.fedavg_acc_lowbit(update.format.fmt, self._acc, 0, update.blocks, self.n_params, update.seed, w_acc)
        elif isinstance(update, np.ndarray):
            if update.dtype != np.float32 or update.ndim != 1 or update.size != self.n_params:
                raise ValueError(f"a float32 update must be 1-D float32 of {self.n_params} values, "
                                 f"got {update.dtype} {update.shape}")
            if not np.isfinite(update).all():
                raise ValueError("update holds NaN or Inf: not added")
            _core.fedavg_acc_f32(self._acc, np.ascontiguousarray(update), w_acc)
        else:
            raise ValueError(f"update must be an Int8Update, a LowbitUpdate or a float32 array, got {type(update).__name__}")
        self.add_weight(w)

    def add_chunk(self, blocks: bytes | memoryview, first_block: int, weight: float) -> None:
        """Add whole int8 blocks of one update, starting at block index first_block.

        The chunk's weight is not counted: call add_weight(n_k) once the update is complete
        (see the transport's policy for updates that never complete).
        """
        w = _check_weight(weight)
        nbytes = len(memoryview(blocks).cast("B"))
        if nbytes == 0 or nbytes % BLOCK_BYTES:
            raise ValueError(f"chunk of {nbytes} bytes is not a whole number of {BLOCK_BYTES}-byte blocks")
        offset = int(first_block) * QK
        if first_block < 0 or offset >= self.n_params:
            raise ValueError(f"chunk starts at block {first_block}, the model has {(self.n_params + QK - 1) // QK} blocks")
        n = min(nbytes // BLOCK_BYTES * QK, self.n_params - offset)
        if nbytes // BLOCK_BYTES > (n + QK - 1) // QK:
            raise ValueError(f"chunk at block {first_block} runs past the model's last block")
        problem = check_blocks(blocks)  # the codec's reader rule: nothing malformed reaches the sum
        if problem is not None:
            raise ValueError(f"chunk at block {first_block} refused: {problem} (a scale outside "
                             f"[0, FLT_MAX/127] or an int8 -128)")
        _core.fedavg_acc_q8(self._acc, offset, blocks, n, w)

    def add_sum(self, partial_sum: np.ndarray, total_weight: float, count: int = 1) -> None:
        """Add another accumulator's sum (sum n_k delta_k of a fleet) with its total weight sum n_k:
        hierarchical FedAvg, exactly as if its count updates had been added here one by one."""
        if not isinstance(partial_sum, np.ndarray) or partial_sum.dtype != np.float32 or partial_sum.ndim != 1 \
                or partial_sum.size != self.n_params:
            got = f"{partial_sum.dtype} {partial_sum.shape}" if isinstance(partial_sum, np.ndarray) else type(partial_sum).__name__
            raise ValueError(f"a partial sum must be 1-D float32 of {self.n_params} values, got {got}")
        if not np.isfinite(partial_sum).all():
            raise ValueError("partial sum holds NaN or Inf: not added")
        w = _check_weight(total_weight)
        if int(count) < 1:
            raise ValueError(f"a partial sum covers at least one update, got count {count}")
        _core.fedavg_acc_f32(self._acc, np.ascontiguousarray(partial_sum), 1.0)
        self.total_weight += w
        self.count += int(count)

    def partial_sum(self) -> tuple[np.ndarray, float]:
        """(a copy of sum n_k delta_k, sum n_k) before apply: what a fleet hands to the tier above."""
        return self._acc.copy(), self.total_weight

    def add_weight(self, weight: float) -> None:
        self.total_weight += _check_weight(weight)
        self.count += 1

    def perturb(self, vector: np.ndarray) -> None:
        """Add a vector that is not an update to the sum (DP noise): no weight is counted."""
        if vector.dtype != np.float32 or vector.shape != (self.n_params,) or not np.isfinite(vector).all():
            raise ValueError(f"a perturbation must be {self.n_params} finite float32 values")
        _core.fedavg_acc_f32(self._acc, np.ascontiguousarray(vector), 1.0)

    def apply(self, global_weights: np.ndarray, denominator: float | None = None) -> None:
        """w += acc / total_weight in place (w_{t+1} = sum n_k/n w_k with acc = sum n_k delta_k); reset.

        denominator replaces total_weight (DP's fixed denominator: the expected devices per round).
        """
        if self.total_weight <= 0:
            raise ValueError("no updates were added: nothing to apply")
        d = self.total_weight if denominator is None else _check_weight(denominator)
        _core.fedavg_apply_f32(global_weights, self._acc, 1.0 / d)
        self.total_weight = 0.0
        self.count = 0

    def reset(self) -> None:
        self._acc.fill(0.0)
        self.total_weight = 0.0
        self.count = 0

    @property
    def nbytes(self) -> int:
        return int(self._acc.nbytes)
