"""`fedtiny bridge --secagg-proxy`: the bridge takes part in SecAgg+ rounds on behalf of a serial
device that cannot (a 32 KB-flash part has no room for X25519, the AEAD and Shamir sharing:
docs/secagg.md "A device too small for SecAgg+").

The device keeps its plain protocol over the serial line: join, OFFER, model download, local
training, RESULT and its int8 update chunks, every frame authenticated with its session key. The
bridge holds the device's pre-shared key (it is the device owner's computer), so it follows the
device's join (the join HELLO and the aggregator's WELCOME, both under that key) and derives the
session key as both ends do. From then on it is the session's end on both sides:

    device (serial)                 bridge (DeviceProxy)                       aggregator (UDP)
    frames, sealed by the device -> checked with the session key (tag, replay); refused and
                                    counted if they do not verify; sealed again -> frames
                                 <- OFFER of a secure round: fixed_scale 0, int8 upload  <- OFFER (fixed_scale = clip)
                                    SETUP, KEY_LIST, SHARE_LIST, UNMASK: answered   <-> SecAgg+ stage messages
                                    by secagg_round.DeviceSecAgg, never sent on
    RESULT + int8 UPDATE_CHUNKs  -> kept here, ACKed to the device; decoded (codec),
                                    the round's grid (clip, stochastic rounding) and
                                    masks applied by the same DeviceSecAgg a Python
                                    device runs                                   -> MASKED_UPDATE chunks

The aggregator and anyone on the UDP path see the masked vector only; the bridge's host sees this
one device's update, as the device's own computer would. A device proxied this way looks to the
aggregator exactly like a `fedtiny client` in a secure round (same messages, same grid vector for
the same delta), and a device whose serial side goes away before its update is in is a dropout.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from typing import Callable

from .. import codec
from . import secagg_round, session, wire
from .session import Rejected

log = logging.getLogger("fedtiny.bridge")

M = wire.MsgType
TICK_SECONDS = 0.1        # the masked upload's probe timer (DeviceSecAgg.tick)
KEEP_ROUNDS = 4           # secure rounds remembered (their offers, which updates are in)


_FIX = {"bad_tag": "--keys must hold the key provisioned in the device, the aggregator the same one",
        "unknown_device": "add the device's 'id hexkey' line to --keys",
        "no_session": "a device joins again after 2 s without an answer; it was joined before this bridge started",
        "stale_welcome": "a WELCOME for a join not in progress: ignored, as the device would"}


def plain_offer(offer: wire.Offer) -> wire.Offer:
    """What the device is offered for a secure round: the same model and hyperparameters, an int8
    upload (with the round's rounding flag) instead of the masked one, so a device that runs only
    the plain protocol trains and uploads as in any round. Only the proxy sees that upload."""
    return dataclasses.replace(offer, fixed_scale=0.0, up_codec=wire.CODEC_INT8,
                               codec_flags=offer.codec_flags & codec.FLAG_STOCHASTIC,
                               update_chunks=wire.update_chunks(offer.n_params, wire.CODEC_INT8))


@dataclasses.dataclass
class _Upload:
    """The device's int8 update of one secure round, as its chunks come off the serial line."""

    round: int
    n_params: int
    flags: int
    seed: int
    n_chunks: int
    parts: dict = dataclasses.field(default_factory=dict)

    def chunk_bytes(self, i: int) -> int:
        size = wire.chunk_blocks(wire.CODEC_INT8) * codec.BLOCK_BYTES
        return min(size, codec.nblocks(self.n_params) * codec.BLOCK_BYTES - i * size)

    def update(self) -> codec.Int8Update:
        head = codec.HEADER.pack(codec.MAGIC, codec.VERSION, self.flags & 0xFF, codec.QK, self.n_params,
                                 self.seed & 0xFFFFFFFF)
        return codec.Int8Update.from_bytes(head + b"".join(self.parts[i] for i in range(self.n_chunks)))


class DeviceProxy:
    """One serial device's SecAgg+ stage, run by the bridge. from_device / from_aggregator take
    raw frames; to_device / to_aggregator send them."""

    def __init__(self, name: str, keys: dict[int, bytes], counts: Counter,
                 to_device: Callable[[bytes], None], to_aggregator: Callable[[bytes], None]):
        self.name = name
        self.keys = keys
        self.counts = counts
        self.to_device, self.to_aggregator = to_device, to_aggregator
        self.device_id: int | None = None    # of the join in progress or the session
        self.psk: bytes | None = None
        self.nonce: bytes | None = None      # the join in progress (from the device's verified HELLO)
        self.up: session.Session | None = None     # bridge <-> aggregator (the bridge's sequence numbers)
        self.down: session.Session | None = None   # bridge <-> device
        self.secagg: secagg_round.DeviceSecAgg | None = None
        self.offers: dict[int, wire.Offer] = {}    # secure rounds: the aggregator's offer
        self.upload: _Upload | None = None
        self.delivered: set[int] = set()           # secure rounds whose update went to DeviceSecAgg
        self.logged: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    # -- refusals --
    def _refuse(self, side: str, exc: Rejected | wire.FrameError) -> None:
        """A frame that does not verify: dropped, counted by reason, one log line per reason."""
        key = f"proxy_{side}_{exc.reason}"
        self.counts[key] += 1
        if key not in self.logged:
            self.logged.add(key)
            log.warning("%s: refused a frame from the %s: %s; later ones are counted as %s (%s)",
                        self.name, side, exc, key, _FIX.get(exc.reason, "dropped; the round goes on without it"))

    # -- device -> aggregator --
    def from_device(self, frame: bytes) -> None:
        try:
            self._from_device(frame)
        except (Rejected, wire.FrameError) as exc:
            self._refuse("device", exc)

    def _from_device(self, frame: bytes) -> None:
        hdr = session.peek(frame)
        if hdr.session == 0:   # a join HELLO, under the device's pre-shared key: passed on unchanged
            psk = self.keys.get(hdr.device_id)
            if psk is None:
                raise Rejected("unknown_device", f"device {hdr.device_id} has no key in the bridge's --keys")
            hello = session.open_join(frame, psk)
            self.device_id, self.psk, self.nonce = hdr.device_id, psk, hello.nonce
            self.to_aggregator(frame)
            return
        if self.down is None or hdr.device_id != self.device_id:
            raise Rejected("no_session", f"device {hdr.device_id} has no session through this bridge")
        f = self.down.open(frame)
        if f.round in self.offers and f.type in (M.RESULT, M.UPDATE_CHUNK):
            self._collect(f)
            return
        self.to_aggregator(self.up.seal(f.type, f.round, f.payload, *f.chunk))

    def _ack_device(self, up: _Upload) -> None:
        ack = wire.Ack.for_chunks(M.UPDATE_CHUNK, up.parts.keys() if up.round not in self.delivered
                                  else range(up.n_chunks), up.n_chunks)
        self.to_device(self.down.seal(M.ACK, up.round, ack.pack()))

    def _collect(self, f: wire.Frame) -> None:
        """The device's RESULT and update chunks of a secure round: kept, never passed on."""
        offer = self.offers[f.round]
        up = self.upload if self.upload is not None and self.upload.round == f.round else None
        if f.type == M.RESULT:
            res = wire.Result.unpack(f.payload)
            n = wire.update_chunks(offer.n_params, wire.CODEC_INT8)
            if res.update_chunks != n:
                raise Rejected("bad_payload", f"RESULT announces {res.update_chunks} update chunks, the round's "
                                              f"int8 update has {n}")
            if up is None:
                up = self.upload = _Upload(f.round, offer.n_params, res.update_flags, res.update_seed, n)
            self._ack_device(up)   # what is still missing (the device sends it), or all of it
            return
        if up is None:
            raise Rejected("bad_chunk", f"update chunk {f.chunk_index} of round {f.round} before its RESULT")
        i = f.chunk_index
        if f.chunk_count != up.n_chunks or not 0 <= i < up.n_chunks or len(f.payload) != up.chunk_bytes(i):
            raise Rejected("bad_chunk", f"update chunk {i} of {f.chunk_count}, {len(f.payload)} bytes")
        if f.round in self.delivered or i in up.parts:
            self.counts["proxy_duplicate_chunk"] += 1
            if f.round in self.delivered:
                self._ack_device(up)
            return
        problem = codec.check_blocks(f.payload)
        if problem:
            raise Rejected(problem, f"update chunk {i} of round {f.round}")
        up.parts[i] = bytes(f.payload)
        if len(up.parts) < up.n_chunks:
            return
        delta = up.update().decode()   # the device's update as the aggregator would have decoded it
        key = secagg_round.device_round_key(offer.seed, f.round, self.device_id)
        self.delivered.add(f.round)
        self.counts["proxy_updates"] += 1
        self._secure().set_delta(f.round, delta, key, time.monotonic())
        self._ack_device(up)
        log.info("%s: device %d's update of secure round %d is in; it goes masked", self.name, self.device_id, f.round)

    # -- aggregator -> device --
    def from_aggregator(self, frame: bytes) -> None:
        try:
            self._from_aggregator(frame)
        except (Rejected, wire.FrameError) as exc:
            self._refuse("aggregator", exc)

    def _from_aggregator(self, frame: bytes) -> None:
        hdr = session.peek(frame)
        if hdr.type == M.WELCOME:
            if self.psk is None or hdr.device_id != self.device_id:
                raise Rejected("stale_welcome", f"no join of device {hdr.device_id} in progress")
            w = session.open_welcome(frame, self.psk, self.nonce)
            if self.up is None or (self.up.run, self.up.epoch) != (w.run, w.epoch):
                self._forget_rounds()   # another aggregator life: its round numbers are new rounds
            self.up = session.Session(self.device_id, self.psk, w, follow_rounds=True)
            self.down = session.Session(self.device_id, self.psk, w, follow_rounds=True)
            self.nonce = None
            self.to_device(frame)
            return
        if self.up is None or hdr.device_id != self.device_id:
            raise Rejected("no_session", f"a frame for device {hdr.device_id}, no session through this bridge")
        f = self.up.open(frame)
        t = f.type
        if t in wire.SECAGG_TYPES or (t == M.ACK and f.payload[:1] == bytes([M.MASKED_UPDATE])):
            self._secure().on_frame(f, time.monotonic())   # answered here; the device never sees them
            return
        payload = f.payload
        if t == M.OFFER:
            offer = wire.Offer.unpack(f.payload)
            if offer.fixed_scale > 0:
                self.offers[f.round] = offer
                for old in sorted(self.offers)[:-KEEP_ROUNDS]:
                    del self.offers[old]
                self.delivered = {r for r in self.delivered if r in self.offers}
                if f.round in self.delivered:   # asked again (its HELLO): the update is in, nothing to do
                    t, payload = M.ERROR, wire.ErrorMsg(session.E_NOT_SELECTED, "waiting for the next round").pack()
                else:
                    payload = plain_offer(offer).pack()
                    self.counts["proxy_offers"] += 1
        self.to_device(self.down.seal(t, f.round, payload, *f.chunk))

    def _forget_rounds(self) -> None:
        self.offers.clear()
        self.delivered.clear()
        self.upload = None
        self.secagg = None

    # -- the SecAgg+ device side --
    def _secure(self) -> secagg_round.DeviceSecAgg:
        if self.secagg is None or self.secagg.device_id != self.device_id:
            self.secagg = secagg_round.DeviceSecAgg(self.device_id, self._send_secure)
        return self.secagg

    def _send_secure(self, msg_type: int, payload: bytes, chunk: tuple[int, int]) -> None:
        if self.up is None:
            return
        self.to_aggregator(self.up.seal(msg_type, self.secagg.round, payload, *chunk))

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        if self.secagg is not None:
            self.secagg.tick(time.monotonic())
        self.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
