"""Chunk-wise ingest of int8 updates into the FedAvg accumulator (policy: docs/network.md).

Staging, not subtraction: float32 addition is not reversible ((a + x) - x != a), so a device
that dies mid-upload could never be taken back out of the accumulator exactly. Instead each
uploading device owns one staging slot holding its int8 blocks as they arrive (1.03 bytes per
parameter, the wire form, never a float32 copy). A complete update is added to the accumulator
in one in-place C pass with its weight n_k (through the round logic, rounds.Round.submit); an incomplete one is dropped with its slot and has
touched nothing. At most `slots` devices upload at once, so memory is
    accumulator 4n + slots * 1.03n bytes
whatever the number of devices; the aggregator sizes `slots` from a memory budget
(slots_for_budget), not a small constant, so a few devices that open uploads and never finish
(squatting) cannot hold every slot. A device that finds every slot taken by unfinished uploads
is told "busy" and retries; a slot is reclaimed for a waiting device when its own device has
gone silent (stall_seconds) or has held it past its upload deadline (upload_seconds from the
slot's opening). A device whose slot was reclaimed for its deadline gets a new one only when one
is free: it never displaces another device (fair to the devices that finish).

Completed updates are committed in ascending device id, so that the sum does not depend on the
order of arrival (float32 addition is not associative): bit for bit the same as adding the
updates in id order, as `fedtiny simulate` does. Given the round's selected devices (`order`),
a complete update is folded into the sum as soon as every selected device of a lower id has been
committed, and its slot is free again at once; the others wait, staged, for the lower ids (or
for the round's close, which commits what is complete in ascending id). Staged memory thus
follows the uploads that are open or complete out of id order, not the round's devices: when
uploads complete roughly in id order (a fleet whose uploads are scheduled by id), a round of
1,000 devices touches no more slots than a round of 100. In the worst order (the lowest id
completes last) every complete update waits; once the slots run out, complete updates are
committed when their slot is needed (ascending id among them): the sum is then independent of
arrival order only while a round's waiting updates fit in the slots, as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from typing import Callable, Iterable

from .._wire import ffi as _ffi, lib as _lib
from ..codec import FLAG_STOCHASTIC, HEADER, HEADER_BYTES, VERSION, Int8Update
from . import transfer
from .wire import CODEC_INT8, UPDATE_CHUNK_BLOCKS as CHUNK_BLOCKS, chunk_blocks, update_chunks  # noqa: F401

_REASONS = {r: _ffi.string(_lib.ft_rx_reason_name(r)).decode() for r in range(_lib.FT_RX_N_REASONS)}


def check_blocks(up_codec: int, data) -> str | None:
    """The upload codec's reader rule (C, ft_codec_check_blocks), as fedtiny.codec names it."""
    mv = memoryview(data).cast("B")
    if len(mv) == 0:
        return "bad_length"
    reason = _lib.ft_codec_check_blocks(up_codec, _ffi.from_buffer(mv), len(mv))
    return None if reason == 0 else _REASONS[reason]


FOLD_IN_ID_ORDER = True   # False: complete updates wait for the close (the path before; bench/bench_ingest.py)


class Staging:
    """Memory for `slots` uploads in their wire form, allocated once per aggregator run and
    reused round after round: slot i is buf[i] (Int8Update header + blocks), received[i] (one
    flag per chunk) and count[i]. The C receive path (fedtiny/net/rx.py) writes chunks into
    the same arrays. Slots are handed out lowest index first, so the pages touched (the peak
    RSS) follow the number of uploads at once, never the number of devices."""

    def __init__(self, n_params: int, slots: int, up_codec: int = CODEC_INT8):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.n_params = int(n_params)
        self.slots = int(slots)
        self.up_codec = int(up_codec)        # the run's upload codec (wire id): blocks, chunks, reader rule
        self.magic, self.block_values, self.block_bytes = transfer.upload_format(self.up_codec)
        self.n_blocks = -(-self.n_params // self.block_values)
        self.chunk_blocks = chunk_blocks(self.up_codec)
        self.n_chunks = update_chunks(self.n_params, self.up_codec)
        self.nbytes = self.n_blocks * self.block_bytes
        self.buf = np.zeros((self.slots, HEADER_BYTES + self.nbytes), dtype=np.uint8)
        self.received = np.zeros((self.slots, self.n_chunks), dtype=np.uint8)
        self.count = np.zeros(self.slots, dtype=np.uint32)
        self._free = list(range(self.slots - 1, -1, -1))   # a stack: lowest index on top
        self.touched = 0          # slots ever used (lowest first): the staging memory touched

    @property
    def n_free(self) -> int:
        return len(self._free)

    def take(self, flags: int, seed: int) -> int:
        i = self._free.pop()
        self.touched = max(self.touched, i + 1)
        self.received[i] = 0
        self.count[i] = 0
        HEADER.pack_into(self.buf[i], 0, self.magic, VERSION, flags & 0xFF, self.block_values, self.n_params,
                         seed & 0xFFFFFFFF)
        return i

    def give_back(self, i: int) -> None:
        self._free.append(i)
        self._free.sort(reverse=True)


@dataclass
class _Slot:
    device_id: int
    weight: float
    index: int                    # into the Staging arrays
    staging: Staging
    last_seen: float
    opened: float = 0.0

    @property
    def buf(self) -> np.ndarray:
        return self.staging.buf[self.index]

    @property
    def received(self) -> np.ndarray:
        return self.staging.received[self.index].view(bool)

    @property
    def n_received(self) -> int:
        return int(self.staging.count[self.index])

    @property
    def complete(self) -> bool:
        return self.n_received == self.staging.n_chunks


@dataclass
class IngestStats:
    committed: list[int] = field(default_factory=list)   # device ids added to the accumulator
    dropped: list[int] = field(default_factory=list)     # incomplete at close or reclaimed
    duplicates: int = 0
    busy: int = 0


def slots_for_budget(n_params: int, budget_bytes: float, up_codec: int = CODEC_INT8) -> int:
    """Staging slots that fit a memory budget: one slot holds one update's wire bytes."""
    return max(1, int(budget_bytes // transfer.update_nbytes(int(n_params), up_codec)))


class UpdateIngest:
    """One round's uploads: stage chunks per device, commit complete updates, drop the rest."""

    def __init__(self, n_params: int, commit: Callable[[int, Int8Update, float], None], *,
                 slots: int = 8, stall_seconds: float = 5.0, upload_seconds: float = math.inf,
                 staging: Staging | None = None, on_slot: Callable[[int, int], None] | None = None,
                 order: Iterable[int] = ()):
        """commit(device_id, update, weight) receives each complete update, in ascending id order
        among those committed together (rounds.Round.submit, or Accumulator.add in tests).
        staging: the run's slot memory (default: its own, of `slots` slots). on_slot(device_id,
        index) is told each slot a device gets (index -1: it lost it), for the C receive path.
        order: the round's selected devices; a complete update is committed as soon as every
        one of them with a lower id is committed (none given: at the close, or when its slot is
        needed)."""
        if staging is None:
            staging = Staging(n_params, slots)
        elif staging.n_params != int(n_params):
            raise ValueError(f"staging for {staging.n_params} parameters, the round has {n_params}")
        self.commit = commit
        self.staging = staging
        self.on_slot = on_slot or (lambda device_id, index: None)
        self.n_params = int(n_params)
        self.n_chunks = staging.n_chunks
        self.nbytes = staging.nbytes
        self.slots = staging.slots
        self.stall_seconds = stall_seconds
        self.upload_seconds = upload_seconds
        self._overdue: set[int] = set()   # devices whose slot was reclaimed at its deadline
        self._staged: dict[int, _Slot] = {}
        self._done: set[int] = set()      # devices whose update is complete (staged or committed)
        self._order = sorted({int(d) for d in order}) if FOLD_IN_ID_ORDER else []
        self._next = 0                    # self._order[:self._next] are committed
        self.stats = IngestStats()
        self.closed = False

    # -- queries -------------------------------------------------------------------------
    def chunk_bytes(self, index: int) -> int:
        st = self.staging
        first = index * st.chunk_blocks
        return (min(first + st.chunk_blocks, st.n_blocks) - first) * st.block_bytes

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

    def staged(self, device_id: int, now: float) -> str:
        """Chunks of this device were staged by the C receive path: "complete" or "added"."""
        slot = self._staged.get(device_id)
        if slot is None:
            return "duplicate" if device_id in self._done else "busy"
        slot.last_seen = now
        if slot.complete:
            self._done.add(device_id)
            self._fold()
            return "complete"
        return "added"

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
        reason = check_blocks(self.staging.up_codec, data)
        if reason:
            raise ValueError(reason)
        start = HEADER_BYTES + index * self.staging.chunk_blocks * self.staging.block_bytes
        slot.buf[start:start + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.staging.received[slot.index, index] = 1
        self.staging.count[slot.index] += 1
        if slot.complete:
            self._done.add(device_id)
            self._fold()
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
        if len(self._staged) >= self.slots and device_id not in self._overdue:
            self._reclaim_stalled(now)
        if len(self._staged) >= self.slots:
            return None
        slot = _Slot(device_id, float(weight), self.staging.take(flags, seed), self.staging, now, now)
        self._staged[device_id] = slot
        self.on_slot(device_id, slot.index)
        return slot

    def _release(self, device_id: int) -> None:
        slot = self._staged.pop(device_id)
        self.on_slot(device_id, -1)
        self.staging.give_back(slot.index)

    def _reclaim_stalled(self, now: float) -> None:
        for device_id, slot in list(self._staged.items()):
            if slot.complete:
                continue
            overdue = now - slot.opened > self.upload_seconds
            if overdue or now - slot.last_seen > self.stall_seconds:
                self._release(device_id)
                self.stats.dropped.append(device_id)
                if overdue:
                    self._overdue.add(device_id)

    def _commit_one(self, device_id: int) -> None:
        slot = self._staged[device_id]
        update = transfer.staged_update(self.staging.up_codec, slot.buf, self.n_params)
        self.stats.committed.append(device_id)
        try:
            self.commit(device_id, update, slot.weight)   # adds it to the sum now: then the slot is free
        finally:
            self._release(device_id)

    def _fold(self) -> None:
        """Commit complete updates while the lowest selected id not yet committed has one."""
        while self._next < len(self._order):
            device_id = self._order[self._next]
            if device_id not in self._done:
                return                           # it may still come: higher ids wait for it
            if device_id in self._staged:
                self._commit_one(device_id)
            self._next += 1                      # committed now, or earlier (its slot was needed)

    def _commit_complete(self) -> None:
        for device_id in sorted(d for d, s in self._staged.items() if s.complete):
            self._commit_one(device_id)

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
            self._release(device_id)
            self.stats.dropped.append(device_id)
        return self.stats
