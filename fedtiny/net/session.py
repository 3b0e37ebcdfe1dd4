"""Sessions: one authenticated conversation with one peer, and the handshake that opens it.

The frame codec is fedtiny.net.wire (the C99 library through cffi); this module only keeps the
per-peer state around it, for the aggregator (one current Session per device, plus the few it
has offered in WELCOMEs and not yet seen used) and for a device (one Session with the
aggregator). It is the one place of the network programs that calls wire's frame functions.

Handshake (docs/PROTOCOL.md "Sessions"):

    device                                              aggregator (run id R, epoch E)
    HELLO, session 0, pre-shared key, nonce Nd    -->
                                                  <--   WELCOME (R, E, s, Nd, Na), pre-shared key
    every later frame: session s, epoch E, run R, tagged with the session key
    K_s = HMAC(psk, "fedtiny/2 session" || device id || WELCOME payload), both ways

A device accepts only the WELCOME that echoes the nonce of the join in progress, once; the
aggregator makes a session current when the first frame tagged with its key arrives.
"""
from __future__ import annotations

import os

from . import wire

M = wire.MsgType
HELLO, OFFER, MODEL_CHUNK, UPDATE_CHUNK, ACK, ERROR, RESULT, WELCOME = (
    M.HELLO, M.OFFER, M.MODEL_CHUNK, M.UPDATE_CHUNK, M.ACK, M.ERROR, M.RESULT, M.WELCOME)
MAX_FRAME = wire.MAX_FRAME
MODEL_CHUNK_BYTES = wire.MODEL_CHUNK_BYTES
UPDATE_CHUNK_BYTES = wire.UPDATE_CHUNK_BYTES

# Application error codes (ERROR payload, >= 100; docs/network.md).
E_BUSY = 100           # every staging slot is taken by an unfinished upload: retry later
E_ROUND_CLOSED = 101   # the round closed without this device's update (straggler or late)
E_NOT_SELECTED = 102   # this device is not in the open round
E_REJECTED = 103       # the update was refused (text says why)
E_MODEL = 104          # the device cannot train this model (size or architecture): it stops
E_FINISHED = 105       # the aggregator finished its rounds: the device may stop
E_REFUSED = 106        # the device's HELLO breaks the aggregator's bounds (text says which): never selected
E_TOO_STALE = 107      # --mode async: the update's model version is older than --max-staleness; a new offer follows


class Rejected(Exception):
    """A frame that must be dropped; .reason is a stable snake_case name for the counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _guarded(call):
    try:
        return call()
    except wire.FrameError as exc:
        raise Rejected(exc.reason, str(exc)) from None


def peek(frame: bytes) -> wire.Frame:
    """The header of a frame, structural checks only: to find its key. Raises Rejected."""
    if len(frame) > MAX_FRAME:
        raise Rejected("oversize", f"{len(frame)} bytes")
    return _guarded(lambda: wire.peek(frame))


def new_nonce() -> bytes:
    """A join nonce (device) or session nonce (aggregator): 8 random bytes."""
    return os.urandom(wire.NONCE_BYTES)


# ---- the handshake, under the pre-shared key ----------------------------------------------------

def join_hello(device_id: int, psk: bytes, hello: wire.Hello, *, epoch: int = 0, run: int = 0) -> bytes:
    """A join HELLO: session 0, tagged with the pre-shared key (epoch/run: the life the device
    last knew, informational). Not sequenced: the nonce in hello makes each join distinct."""
    return wire.encode(HELLO, device_id, 0, 0, hello.pack(), psk, epoch=epoch, run=run)


def open_join(frame: bytes, psk: bytes) -> wire.Hello:
    """The Hello of an authentic join HELLO (session 0), or Rejected(reason)."""
    if len(frame) > MAX_FRAME:
        raise Rejected("oversize", f"{len(frame)} bytes")
    f = _guarded(lambda: wire.decode(frame, psk, None))
    if f.type != HELLO or f.session != 0:
        raise Rejected("stale_session", f"type {f.type.name} outside a session")
    return _guarded(lambda: wire.Hello.unpack(f.payload))


def welcome_frame(device_id: int, psk: bytes, welcome: wire.Welcome) -> bytes:
    return wire.encode(WELCOME, device_id, 0, 0, welcome.pack(), psk, session=welcome.session,
                       epoch=welcome.epoch, run=welcome.run)


def open_welcome(frame: bytes, psk: bytes, nonce: bytes | None) -> wire.Welcome:
    """The Welcome of an authentic WELCOME that answers the join carrying nonce, or Rejected:
    "stale_welcome" when it answers another join (an old one, replayed, or none in progress)."""
    f = _guarded(lambda: wire.decode(frame, psk, None))
    w = _guarded(lambda: wire.Welcome.unpack(f.payload))
    if (f.session, f.epoch, f.run) != (w.session, w.epoch, w.run):
        raise Rejected("bad_payload", "WELCOME header and payload name different sessions")
    if nonce is None or w.device_nonce != nonce:
        raise Rejected("stale_welcome", "answers a join that is not in progress")
    return w


# ---- a session ----------------------------------------------------------------------------------

class Session:
    """Frames to and from one peer in one session (device_id names the device on both ends).

    The key is the session key; sequence numbers start at 1 and only grow; the replay guard
    accepts only frames that name this session (run, epoch, number)."""

    def __init__(self, device_id: int, psk: bytes, welcome: wire.Welcome, *, follow_rounds: bool = False):
        self.device_id = int(device_id)
        self.welcome = welcome
        self.key = wire.session_key(psk, self.device_id, welcome)
        self.run, self.epoch, self.number = welcome.run, welcome.epoch, welcome.session
        self.follow_rounds = follow_rounds  # a device follows the aggregator into newer rounds
        self.seq = 0
        self.hello_seq = 0                  # highest in-session HELLO seq accepted (HELLO is outside rounds)
        self.guard = wire.ReplayGuard(0, run=self.run, epoch=self.epoch, session=self.number)

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
                           chunk=(chunk_index, chunk_count), session=self.number, epoch=self.epoch,
                           run=self.run)

    def open(self, frame: bytes) -> wire.Frame:
        """Authenticate and check a frame of this session: the Frame, or Rejected(reason).

        A HELLO (outside rounds) is checked for this session and its tag, and its sequence
        number must be above the last HELLO's; every other frame goes through the round and
        replay window."""
        if len(frame) > MAX_FRAME:
            raise Rejected("oversize", f"{len(frame)} bytes")
        if peek(frame).type == HELLO:
            f = _guarded(lambda: wire.decode(frame, self.key, wire.ReplayGuard(
                0, run=self.run, epoch=self.epoch, session=self.number)))
            if f.seq <= self.hello_seq:
                raise Rejected("replay", f"HELLO seq {f.seq}, last {self.hello_seq}")
            self.hello_seq = f.seq
            return f
        return _guarded(lambda: wire.decode(frame, self.key, self.guard, accept_newer_round=self.follow_rounds))


def stale_reason(frame: bytes, run: int, epoch: int) -> Rejected:
    """Why a frame naming no session of its device is refused: stale_run, stale_epoch or
    stale_session, as the C codec names it (checked before any tag is computed)."""
    nobody = wire.ReplayGuard(0, run=run, epoch=epoch, session=0)
    try:
        wire.decode(frame, bytes(wire.MIN_KEY_BYTES), nobody)
    except wire.FrameError as exc:
        return Rejected(exc.reason, str(exc))
    return Rejected("bad_tag")  # only a key of zeros would get here
