"""Chunk-wise ingest of int8 updates into the FedAvg accumulator (policy: docs/network.md).

Staging, not subtraction: float32 addition is not reversible ((a + x) - x != a), so a device
that dies mid-upload could never be taken back out of the accumulator exactly. Instead each
uploading device owns one staging slot holding its int8 blocks as they arrive (1.03 bytes per
parameter, the wire form, never a float32 copy). A complete update is added to the accumulator
in one in-place C pass with its weight n_k (through the round logic, rounds.Round.submit); an incomplete one is dropped with its slot and has
touched nothing. At most `slots` devices upload at once, so memory is
    accumulator 4n + slots * 1.03n bytes
whatever the number of devices. A device that finds every slot taken by unfinished uploads is
told "busy" and retries; slots whose device has gone silent are reclaimed.

Completed updates are committed lazily: when their slot is needed, or at the round's close, in
ascending device id. When a round's updates all fit in the slots (M <= slots) the sum is thus
independent of arrival order, bit for bit the same as adding the updates in id order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from typing import Callable

from ..codec import BLOCK_BYTES, FLAG_STOCHASTIC, HEADER, HEADER_BYTES, MAGIC, QK, VERSION, Int8Update, check_blocks, nblocks

from .wire import UPDATE_CHUNK_BLOCKS as CHUNK_BLOCKS, update_chunks  # noqa: F401  (the protocol's chunking)


@dataclass
class _Slot:
    device_id: int
    weight: float
    buf: np.ndarray               # uint8: Int8Update header + blocks, filled as chunks arrive
    received: np.ndarray          # bool per chunk
    last_seen: float
    n_received: int = 0

    @property
    def complete(self) -> bool:
        return self.n_received == len(self.received)


@dataclass
class IngestStats:
    committed: list[int] = field(default_factory=list)   # device ids added to the accumulator
    dropped: list[int] = field(default_factory=list)     # incomplete at close or reclaimed
    duplicates: int = 0
    busy: int = 0


class UpdateIngest:
    """One round's uploads: stage chunks per device, commit complete updates, drop the rest."""

    def __init__(self, n_params: int, commit: Callable[[int, Int8Update, float], None], *,
                 slots: int = 8, stall_seconds: float = 5.0):
        """commit(device_id, update, weight) receives each complete update, in ascending id order
        among those committed together (rounds.Round.submit, or Accumulator.add in tests)."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.commit = commit
        self.n_params = int(n_params)
        self.n_chunks = update_chunks(self.n_params)
        self.nbytes = nblocks(self.n_params) * BLOCK_BYTES
        self.slots = slots
        self.stall_seconds = stall_seconds
        self._staged: dict[int, _Slot] = {}
        self._done: set[int] = set()      # devices whose update is complete (staged or committed)
        self.stats = IngestStats()
        self.closed = False

    # -- queries -------------------------------------------------------------------------
    def chunk_bytes(self, index: int) -> int:
        first = index * CHUNK_BLOCKS
        return (min(first + CHUNK_BLOCKS, nblocks(self.n_params)) - first) * BLOCK_BYTES

    def is_complete(self, device_id: int) -> bool:
        return device_id in self._done

    @property
    def n_complete(self) -> int:
        return len(self._done)

    def received(self, device_id: int) -> np.ndarray:
        """Which chunks of this device's update arrived (all True once complete)."""
        if device_id in self._done:
            return np.ones(self.n_chunks, dtype=bool)
        slot = self._staged.get(device_id)
        return slot.received.copy() if slot else np.zeros(self.n_chunks, dtype=bool)

    @property
    def staged_bytes(self) -> int:
        return sum(s.buf.nbytes for s in self._staged.values())

    # -- ingest --------------------------------------------------------------------------
    def add_chunk(self, device_id: int, weight: float, index: int, data: bytes | memoryview,
                  now: float, flags: int = FLAG_STOCHASTIC, seed: int = 0) -> str:
        """Stage one chunk. Returns "added", "complete", "duplicate" or "busy"; raises ValueError
        for a chunk that must be rejected (its reason is the message)."""
        if self.closed:
            raise ValueError("round_closed")
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError("bad_weight")
        if not 0 <= index < self.n_chunks:
            raise ValueError("bad_chunk")
        if len(data) != self.chunk_bytes(index):
            raise ValueError("bad_length")
        if device_id in self._done:
            self.stats.duplicates += 1
            return "duplicate"
        slot = self._staged.get(device_id)
        if slot is None:
            slot = self._open_slot(device_id, weight, now, flags, seed)
            if slot is None:
                self.stats.busy += 1
                return "busy"
        elif slot.weight != weight:
            raise ValueError("weight_changed")
        slot.last_seen = now
        if slot.received[index]:
            self.stats.duplicates += 1
            return "duplicate"
        reason = check_blocks(data)
        if reason:
            raise ValueError(reason)
        start = HEADER_BYTES + index * CHUNK_BLOCKS * BLOCK_BYTES
        slot.buf[start:start + len(data)] = np.frombuffer(data, dtype=np.uint8)
        slot.received[index] = True
        slot.n_received += 1
        if slot.complete:
            self._done.add(device_id)
            return "complete"
        return "added"

    def reserve(self, device_id: int, weight: float, now: float, flags: int = FLAG_STOCHASTIC,
                seed: int = 0) -> bool:
        """Open (or keep) this device's staging slot before its chunks come; False: all slots busy."""
        if self.closed:
            raise ValueError("round_closed")
        if device_id in self._done:
            return True
        slot = self._staged.get(device_id)
        if slot is not None:
            if slot.weight != weight:
                raise ValueError("weight_changed")
            slot.last_seen = now
            return True
        if self._open_slot(device_id, float(weight), now, flags, seed) is None:
            self.stats.busy += 1
            return False
        return True

    def _open_slot(self, device_id: int, weight: float, now: float, flags: int, seed: int) -> _Slot | None:
        if len(self._staged) >= self.slots:
            self._commit_complete()
        if len(self._staged) >= self.slots:
            self._reclaim_stalled(now)
        if len(self._staged) >= self.slots:
            return None
        buf = np.zeros(HEADER_BYTES + self.nbytes, dtype=np.uint8)
        HEADER.pack_into(buf, 0, MAGIC, VERSION, flags & 0xFF, QK, self.n_params, seed & 0xFFFFFFFF)
        slot = _Slot(device_id, float(weight), buf,
                     np.zeros(self.n_chunks, dtype=bool), now)
        self._staged[device_id] = slot
        return slot

    def _reclaim_stalled(self, now: float) -> None:
        for device_id, slot in list(self._staged.items()):
            if not slot.complete and now - slot.last_seen > self.stall_seconds:
                del self._staged[device_id]
                self.stats.dropped.append(device_id)

    def _commit_complete(self) -> None:
        for device_id in sorted(d for d, s in self._staged.items() if s.complete):
            slot = self._staged.pop(device_id)
            update = Int8Update(slot.buf, self.n_params, slot.buf[5], int.from_bytes(slot.buf[12:16], "little"))
            self.stats.committed.append(device_id)
            self.commit(device_id, update, slot.weight)

    def flush(self) -> None:
        """Commit every complete staged update now (ascending id)."""
        self._commit_complete()

    @property
    def n_staged_complete(self) -> int:
        return sum(1 for s in self._staged.values() if s.complete)

    def close(self) -> IngestStats:
        """End of round: commit complete updates in ascending device id, drop incomplete ones."""
        self.closed = True
        self._commit_complete()
        for device_id in list(self._staged):
            del self._staged[device_id]
            self.stats.dropped.append(device_id)
        return self.stats
