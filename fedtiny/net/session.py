"""One authenticated conversation with one peer: its key, our sequence numbers, its replay guard.

The frame codec is fedtiny.wire (the C99 library through cffi); this module only keeps the
per-peer state around it, for the aggregator (one Session per device) and for a device (one
Session with the aggregator). It is the one place of the network programs that calls wire.
"""
from __future__ import annotations

import time

from . import wire

M = wire.MsgType
HELLO, OFFER, MODEL_CHUNK, UPDATE_CHUNK, ACK, ERROR, RESULT = (
    M.HELLO, M.OFFER, M.MODEL_CHUNK, M.UPDATE_CHUNK, M.ACK, M.ERROR, M.RESULT)
MAX_FRAME = wire.MAX_FRAME
MODEL_CHUNK_BYTES = wire.MODEL_CHUNK_BYTES
UPDATE_CHUNK_BYTES = wire.UPDATE_CHUNK_BYTES

# Application error codes (ERROR payload, >= 100; docs/network.md).
E_BUSY = 100           # every staging slot is taken by an unfinished upload: retry later
E_ROUND_CLOSED = 101   # the round closed without this device's update (straggler or late)
E_NOT_SELECTED = 102   # this device is not in the open round
E_REJECTED = 103       # the update was refused (text says why)
E_MODEL = 104          # the device cannot train this model (size or hash mismatch)
E_FINISHED = 105       # the aggregator finished its rounds: the device may stop


class Rejected(Exception):
    """A frame that must be dropped; .reason is a stable snake_case name for the counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _sequence_base() -> int:
    # Sequence numbers only grow, also across restarts of the sender: they start from the clock
    # (milliseconds, 31 bits, wraps every 24.8 days), so a restarted process is not taken for a replay.
    return int(time.time() * 1000) & 0x7FFFFFFF


def peek(frame: bytes) -> wire.Frame:
    """The header of a frame, structural checks only: to find its key. Raises Rejected."""
    if len(frame) > MAX_FRAME:
        raise Rejected("oversize", f"{len(frame)} bytes")
    try:
        return wire.peek(frame)
    except wire.FrameError as exc:
        raise Rejected(exc.reason, str(exc)) from None


class Session:
    """Frames to and from one peer device (device_id names the device on both ends)."""

    def __init__(self, device_id: int, key: bytes, *, follow_rounds: bool = False):
        self.device_id = int(device_id)
        self.key = bytes(key)
        self.follow_rounds = follow_rounds  # a device follows the aggregator into newer rounds
        self.seq = _sequence_base()
        self.guard = wire.ReplayGuard(0)

    def new_round(self, round_id: int) -> None:
        """Accept this peer's frames for round_id only, forgetting the sequence numbers seen."""
        self.guard.start_round(round_id)

    @property
    def round(self) -> int:
        return self.guard.round

    def seal(self, msg_type: int, round_id: int, payload: bytes = b"", chunk_index: int = 0,
             chunk_count: int = 1) -> bytes:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return wire.encode(msg_type, self.device_id, round_id, self.seq, payload, self.key,
                           chunk=(chunk_index, chunk_count))

    def open(self, frame: bytes, *, check_replay: bool = True) -> wire.Frame:
        """Authenticate and check a frame from this peer: the Frame, or Rejected(reason).

        check_replay=False only for idempotent frames (a HELLO: joining twice changes nothing)."""
        if len(frame) > MAX_FRAME:
            raise Rejected("oversize", f"{len(frame)} bytes")
        try:
            if check_replay:
                return wire.decode(frame, self.key, self.guard, accept_newer_round=self.follow_rounds)
            return wire.decode(frame, self.key, None)
        except wire.FrameError as exc:
            raise Rejected(exc.reason, str(exc)) from None
