"""Secure aggregation over the network: the SecAgg+ stage machines of fedtiny.privacy.secagg
carried as frames of protocol version 2 (docs/secagg.md "Network messages", docs/PROTOCOL.md).

Each stage message travels in its own frame type (9, 11..17), authenticated by the device's
session like every frame (run, epoch, session and round in the header, the session key's tag, the
replay window). A list is cut at entry boundaries into chunks of at most one payload; the receiver
assembles a message whole before it reaches a stage machine, and a masked vector is staged per
device until every chunk is in: a partial vector never reaches the sum.

    aggregator (AggregatorSecAgg, one SecureRound per round)        device (DeviceSecAgg)
    OFFER (fixed_scale = clip > 0: a secure round) + SETUP   -->    keys (at once, before training)
                                                             <--    KEYS
    KEY_LIST (when every selected device sent keys, or the stage's timeout)  -->  SHARES
    SHARE_LIST                                               -->    (after local training)
                                                             <--    MASKED_UPDATE chunks (ACK type 9)
    UNMASK (the survivors)                                   -->
                                                             <--    UNMASK_SHARES
    the exact sum of the survivors' grid vectors -> rounds.Round.submit_secure_mean, or the round
    is abandoned (model unchanged, reason in the metrics row)

Resends are driven by the aggregator: every RESEND_SECONDS it sends a stage's message again to the
devices that have not answered it; a device answers a repeated message with its cached answer, so
a lost frame in either direction costs one resend. A message that is not accepted is dropped and
counted by reason (rejections of fedtiny.privacy.secagg, plus the frame-level ones here).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..privacy import dp_secagg
from ..privacy import grid as gridmod
from ..privacy import secagg
from ..privacy.grid import Grid
from . import wire
from .session import Rejected

log = logging.getLogger("fedtiny.secagg")

M = wire.MsgType
SETUP_HEAD = struct.Struct("<16s16sHHHHBB2xfd")     # session, graph seed, n, k, t, min_survivors, bits, dp bits, dp z, clip
KEY_ENTRY = struct.Struct("<I32s32s32s")             # id, c_pk, s_pk, commitment
SHARE_ENTRY = struct.Struct(f"<I{secagg.SHARE_CIPHER_BYTES}s")   # recipient (or sender), ciphertext
ID_ENTRY = struct.Struct("<I")
UNMASK_ENTRY = struct.Struct("<IBB32s")              # owner, kind (0 self-mask seed, 1 mask key), x, share
SELF, KEY = 0, 1
MAX_PAYLOAD = wire.MODEL_CHUNK_BYTES                 # 1152
ENTRY = {M.SECAGG_SETUP: ID_ENTRY.size, M.SECAGG_KEY_LIST: KEY_ENTRY.size, M.SECAGG_SHARES: SHARE_ENTRY.size,
         M.SECAGG_SHARE_LIST: SHARE_ENTRY.size, M.SECAGG_UNMASK: ID_ENTRY.size,
         M.SECAGG_UNMASK_SHARES: UNMASK_ENTRY.size, M.MASKED_UPDATE: 2}
#: bytes per chunk of each chunked message: as many whole entries as one payload holds
CHUNK_BYTES = {t: (MAX_PAYLOAD // e) * e for t, e in ENTRY.items()}
RESEND_SECONDS = 0.5      # a stage's message again to a device that has not answered it
ACK_EVERY = 16            # masked-vector chunks between two ACKs
UPLOAD_WINDOW = 32        # masked-vector chunks in flight on the device
UPLOAD_WAIT, UPLOAD_WAIT_MAX = 1.0, 4.0   # the device's probe timer (the aggregator ACKs a quiet upload after RESEND_SECONDS)
STAGE_SECONDS = 5.0       # default --secagg-stage-timeout: keys, shares and unmask stages


def assert_sizes() -> None:
    assert SETUP_HEAD.size == 56 and KEY_ENTRY.size == 100 and SHARE_ENTRY.size == 93 and UNMASK_ENTRY.size == 38


# --- payload layouts -----------------------------------------------------------------------------

class PayloadError(ValueError):
    """A message that does not parse: dropped and counted as bad_payload."""


def _ids_increasing(ids, what: str) -> None:
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise PayloadError(f"{what}: ids must be strictly increasing")


def _entries(data: bytes, st: struct.Struct, what: str) -> list[tuple]:
    if len(data) % st.size:
        raise PayloadError(f"{what}: {len(data)} bytes is not a whole number of {st.size}-byte entries")
    return list(st.iter_unpack(data))


def pack_setup(s: secagg.Setup) -> bytes:
    head = SETUP_HEAD.pack(s.session, s.graph_seed, len(s.devices), s.k, s.t, s.min_survivors, s.grid.bits,
                           s.dp_bits, s.dp_z, s.grid.clip)
    return head + b"".join(ID_ENTRY.pack(d) for d in s.devices)


def parse_setup(round_id: int, data: bytes) -> secagg.Setup:
    if len(data) < SETUP_HEAD.size:
        raise PayloadError(f"SETUP of {len(data)} bytes, the head alone is {SETUP_HEAD.size}")
    session, graph_seed, n, k, t, m, bits, dp_bits, dp_z, clip = SETUP_HEAD.unpack_from(data)
    ids = [e[0] for e in _entries(data[SETUP_HEAD.size:], ID_ENTRY, "SETUP")]
    if len(ids) != n:
        raise PayloadError(f"SETUP names {len(ids)} devices, its head says {n}")
    _ids_increasing(ids, "SETUP")
    try:
        g = Grid(float(clip), int(bits), n)
    except ValueError as exc:
        raise PayloadError(f"SETUP grid: {exc}") from None
    if dp_bits and not (2 <= dp_bits <= 32 and math.isfinite(dp_z) and dp_z > 0):
        raise PayloadError(f"SETUP distributed DP: bits {dp_bits}, z {dp_z} (bits 2..32 and z > 0)")
    if dp_bits and bits != dp_secagg.wire_bits(dp_bits):
        raise PayloadError(f"SETUP distributed DP: a {dp_bits}-bit modulus in {bits}-bit words")
    return secagg.Setup(int(round_id), session, tuple(ids), k, t, m, graph_seed, g, int(dp_bits), float(dp_z) if dp_bits else 0.0)


def pack_keys(msg: secagg.Keys) -> bytes:
    return msg.c_pk + msg.s_pk + msg.commit


def parse_keys(round_id: int, device: int, data: bytes) -> secagg.Keys:
    if len(data) != 3 * secagg.KEY_BYTES:
        raise PayloadError(f"KEYS of {len(data)} bytes, expected {3 * secagg.KEY_BYTES}")
    return secagg.Keys(round_id, device, data[:32], data[32:64], data[64:96])


def pack_key_list(msg: secagg.KeyList) -> bytes:
    return b"".join(KEY_ENTRY.pack(v, *msg.keys[v]) for v in sorted(msg.keys))


def parse_key_list(round_id: int, data: bytes) -> secagg.KeyList:
    rows = _entries(data, KEY_ENTRY, "KEY_LIST")
    _ids_increasing([r[0] for r in rows], "KEY_LIST")
    return secagg.KeyList(round_id, {r[0]: (r[1], r[2], r[3]) for r in rows})


def pack_cipher_list(ciphertexts) -> bytes:
    """SHARES (recipient -> ciphertext) and SHARE_LIST (sender -> ciphertext): one layout."""
    return b"".join(SHARE_ENTRY.pack(v, ciphertexts[v]) for v in sorted(ciphertexts))


def parse_cipher_list(data: bytes, what: str) -> dict[int, bytes]:
    rows = _entries(data, SHARE_ENTRY, what)
    _ids_increasing([r[0] for r in rows], what)
    return {r[0]: r[1] for r in rows}


def pack_ids(ids) -> bytes:
    return b"".join(ID_ENTRY.pack(d) for d in sorted(ids))


def parse_ids(data: bytes, what: str) -> tuple[int, ...]:
    ids = [e[0] for e in _entries(data, ID_ENTRY, what)]
    _ids_increasing(ids, what)
    return tuple(ids)


def pack_unmask_shares(msg: secagg.UnmaskShares) -> bytes:
    rows = [(w, SELF, x, s) for w, (x, s) in msg.self_shares.items()] + \
           [(w, KEY, x, s) for w, (x, s) in msg.key_shares.items()]
    return b"".join(UNMASK_ENTRY.pack(*r) for r in sorted(rows))


def parse_unmask_shares(round_id: int, device: int, data: bytes) -> secagg.UnmaskShares:
    rows = _entries(data, UNMASK_ENTRY, "UNMASK_SHARES")
    _ids_increasing([r[0] for r in rows], "UNMASK_SHARES")
    if any(r[1] not in (SELF, KEY) for r in rows):
        raise PayloadError("UNMASK_SHARES: kind must be 0 (self-mask seed) or 1 (mask key)")
    return secagg.UnmaskShares(round_id, device, {r[0]: (r[2], r[3]) for r in rows if r[1] == SELF},
                               {r[0]: (r[2], r[3]) for r in rows if r[1] == KEY})


def chunks(msg_type: int, data: bytes) -> list[bytes]:
    """The payloads of a message: chunk i holds bytes [c*i, c*(i+1)) with c = CHUNK_BYTES[type];
    an empty list is one empty chunk."""
    if msg_type not in CHUNK_BYTES:
        return [data]
    c = CHUNK_BYTES[msg_type]
    return [data[i:i + c] for i in range(0, len(data), c)] or [b""]


class Assembly:
    """One chunked message from one sender: the chunks as they arrive, the first copy of each
    index standing. add() says what a chunk did."""

    def __init__(self, msg_type: int, count: int):
        self.type, self.count = msg_type, count
        self.parts: dict[int, bytes] = {}

    def add(self, index: int, count: int, payload: bytes) -> str:
        c = CHUNK_BYTES.get(self.type, MAX_PAYLOAD)
        if count != self.count:
            return "bad_chunk"
        if index < count - 1 and len(payload) != c or index == count - 1 and not (0 < len(payload) <= c or count == 1):
            return "bad_chunk"
        old = self.parts.get(index)
        if old is not None:
            return "duplicate" if old == payload else "conflict"
        self.parts[index] = bytes(payload)
        return "complete" if len(self.parts) == self.count else "added"

    def data(self) -> bytes:
        return b"".join(self.parts[i] for i in range(self.count))


# --- the aggregator ------------------------------------------------------------------------------

Send = Callable[[int, int, bytes, tuple[int, int]], None]   # (device, type, payload, (index, count))


@dataclass
class _Staged:
    """A device's masked vector while its chunks arrive (never summed before it is complete)."""
    buf: bytearray
    have: np.ndarray
    crc: np.ndarray
    since_ack: int = 0
    last: float = 0.0
    done: bool = False


# (message type, the stage it answers, the reason a second different one is counted as)
_ANSWERS = {M.SECAGG_KEYS: (secagg.KEYS, secagg.KEY_CONFLICT), M.SECAGG_SHARES: (secagg.SHARES, secagg.KEY_CONFLICT),
            M.SECAGG_UNMASK_SHARES: (secagg.UNMASK, secagg.BAD_UNMASK)}


class SecureRound:
    """The network side of one secure round on the aggregator: frames in, stage messages out."""

    def __init__(self, setup: secagg.Setup, n_params: int, send: Send, now: float, *,
                 stage_timeout: float, masked_deadline: float):
        self.setup = setup
        self.id = setup.round_id
        self.server = secagg.ServerRound(setup, n_params, stage_timeout=stage_timeout, now=now)
        self.masked_deadline = masked_deadline
        self.send = send
        self.n_params = int(n_params)
        self.vector_bytes = setup.grid.vector_bytes(n_params)
        self.vector_chunks = max(1, math.ceil(self.vector_bytes / MAX_PAYLOAD))
        self.out: dict[int, tuple[int, bytes]] = {}     # device -> (type, bytes) of the current stage's message
        self.sent_at: dict[int, float] = {}
        self.incoming: dict[tuple[int, int], Assembly] = {}
        self.accepted: dict[tuple[int, int], bytes] = {}  # (device, type) -> the accepted message's bytes
        self.staged: dict[int, _Staged] = {}
        self.barred: set[int] = set()                   # sent two different vectors while staging
        self.result: secagg.Result | None = None
        self.resent: Counter[str] = Counter()           # messages and chunks received again (harmless)
        setup_bytes = pack_setup(setup)
        for d in setup.devices:
            self._post(d, M.SECAGG_SETUP, setup_bytes, now)

    # -- out --
    def _post(self, device: int, msg_type: int, data: bytes, now: float) -> None:
        self.out[device] = (msg_type, data)
        self._transmit(device, now)

    def _transmit(self, device: int, now: float) -> None:
        msg_type, data = self.out[device]
        parts = chunks(msg_type, data)
        for i, p in enumerate(parts):
            self.send(device, msg_type, p, (i, len(parts)))
        self.sent_at[device] = now

    def _ack(self, device: int, st: _Staged) -> None:
        st.since_ack = 0
        self.send(device, M.ACK, wire.Ack.pack_flags(M.MASKED_UPDATE, st.have), (0, 1))

    # -- in --
    def on_frame(self, device: int, f: wire.Frame, now: float) -> None:
        """An authentic frame of the round from a selected device; Rejected(reason) if dropped."""
        if self.result is not None:
            raise Rejected("wrong_stage", f"secure round {self.id} is over")
        if device not in self.server.graph:
            raise Rejected(secagg.NOT_SELECTED, f"device {device} is not in secure round {self.id}")
        if f.type == M.MASKED_UPDATE:
            self._on_vector_chunk(device, f, now)
            return
        if f.type not in _ANSWERS:
            raise Rejected("unexpected_type", f"type {f.type} is not sent by devices")
        key = (device, f.type)
        if f.type == M.SECAGG_KEYS:
            data = bytes(f.payload)
        else:
            asm = self.incoming.get(key)
            if asm is None:
                if key in self.accepted:  # a resend of an accepted message, or a different one
                    return self._again(device, f, now)
                asm = self.incoming[key] = Assembly(f.type, f.chunk_count)
            what = asm.add(f.chunk_index, f.chunk_count, f.payload)
            if what in ("bad_chunk",):
                raise Rejected("bad_chunk", f"{M(f.type).name} chunk {f.chunk_index} of {f.chunk_count}")
            if what == "conflict":
                raise Rejected(_ANSWERS[f.type][1], f"device {device}: chunk {f.chunk_index} of {M(f.type).name} "
                                                    f"sent twice with different bytes")
            if what != "complete":
                return
            del self.incoming[key]
            data = asm.data()
        old = self.accepted.get(key)
        if old is not None:
            if old == data:
                return self._again(device, f, now)
            raise Rejected(_ANSWERS[f.type][1], f"device {device} sent a second, different {M(f.type).name}")
        try:
            msg = self._parse(device, f.type, data)
        except PayloadError as exc:
            raise Rejected("bad_payload", str(exc)) from None
        verdict = self.server.receive(msg)
        if not verdict.accepted:
            raise Rejected(verdict.reason, verdict.detail)
        self.accepted[key] = data

    def _parse(self, device: int, msg_type: int, data: bytes):
        if msg_type == M.SECAGG_KEYS:
            return parse_keys(self.id, device, data)
        if msg_type == M.SECAGG_SHARES:
            return secagg.Shares(self.id, device, parse_cipher_list(data, "SHARES"))
        return parse_unmask_shares(self.id, device, data)

    def _again(self, device: int, f: wire.Frame, now: float) -> None:
        """The same message again: its answer was lost. Send the device's current stage message."""
        stage = _ANSWERS[f.type][0]
        self.resent[M(f.type).name] += 1   # harmless: counted, not a rejection
        if self.server.stage != stage and device in self.out and now - self.sent_at.get(device, -math.inf) >= 0.05:
            self._transmit(device, now)

    def _on_vector_chunk(self, device: int, f: wire.Frame, now: float) -> None:
        if self.server.stage != secagg.MASKED and device not in self.staged:
            raise Rejected(secagg.WRONG_STAGE, f"masked vector chunk from device {device} in stage {self.server.stage}")
        if device in self.barred:
            raise Rejected(secagg.CONFLICTING_UPDATE, f"device {device} already sent two different masked vectors")
        i, c = f.chunk_index, self.vector_chunks
        expect = min(MAX_PAYLOAD, self.vector_bytes - i * MAX_PAYLOAD) if i < c else -1
        if f.chunk_count != c or len(f.payload) != expect:
            raise Rejected(secagg.WRONG_LENGTH, f"device {device}: masked vector chunk {i} of {f.chunk_count} with "
                                                f"{len(f.payload)} bytes; {self.n_params} parameters at "
                                                f"{self.setup.grid.bits} bits are {c} chunks of {MAX_PAYLOAD} bytes")
        st = self.staged.get(device)
        if st is None:
            if device not in self.server.expected():
                raise Rejected(secagg.NOT_IN_STAGE, f"device {device} did not complete the share stage")
            st = self.staged[device] = _Staged(bytearray(self.vector_bytes), np.zeros(c, bool), np.zeros(c, np.uint32))
        st.last = now
        crc = zlib.crc32(f.payload)
        if st.have[i]:
            if st.crc[i] == crc:
                self._ack(device, st)  # a resend: our ACK was lost
                self.resent[M.MASKED_UPDATE.name] += 1
                return
            if not st.done:  # two vectors interleaved: neither may reach the sum
                self.barred.add(device)
                del self.staged[device]
            raise Rejected(secagg.CONFLICTING_UPDATE, f"device {device}: chunk {i} of a second, different masked vector"
                                                      + ("; the first stands" if st.done else "; both dropped"))
        st.buf[i * MAX_PAYLOAD:i * MAX_PAYLOAD + expect] = f.payload
        st.have[i], st.crc[i] = True, crc
        st.since_ack += 1
        if st.have.all():
            verdict = self.server.receive(secagg.MaskedUpdate(self.id, device, bytes(st.buf)))
            st.done, st.buf = True, bytearray()
            self._ack(device, st)
            if not verdict.accepted:
                raise Rejected(verdict.reason, verdict.detail)
        elif st.since_ack >= ACK_EVERY:
            self._ack(device, st)

    # -- time --
    def poll(self, now: float) -> bool:
        """Close a stage when it is complete or due, resend to the devices that have not answered;
        True once the round has its result."""
        if self.result is not None:
            return True
        s = self.server
        deadline = max(self.masked_deadline, s.deadline) if s.stage == secagg.MASKED else s.deadline
        due = s.complete() or now >= deadline
        if due:
            self._advance(now)
            return self.result is not None
        missing = s.expected() - s.answered()
        for d in sorted(missing):
            if d not in self.out or now - self.sent_at.get(d, -math.inf) < RESEND_SECONDS:
                continue
            st = self.staged.get(d) if s.stage == secagg.MASKED else None
            if st is not None:        # uploading: tell it what is missing
                if now - st.last >= RESEND_SECONDS:
                    self._ack(d, st)
                    self.sent_at[d] = now
            else:
                self._transmit(d, now)
        return False

    def _advance(self, now: float) -> None:
        out = self.server.advance(now)
        if isinstance(out, secagg.Result):
            self.result = out
            self.staged.clear()
            return
        self.out.clear()
        if isinstance(out, secagg.Unmask):
            data = pack_ids(out.survivors)
            for d in out.survivors:
                self._post(d, M.SECAGG_UNMASK, data, now)
            return
        for d, msg in out.items():
            if isinstance(msg, secagg.KeyList):
                self._post(d, M.SECAGG_KEY_LIST, pack_key_list(msg), now)
            else:
                self._post(d, M.SECAGG_SHARE_LIST, pack_cipher_list(msg.ciphertexts), now)


class AggregatorSecAgg:
    """`fedtiny aggregate --secagg`: one SecureRound per round; the aggregator's hooks call this."""

    def __init__(self, config: secagg.Config, *, stage_timeout: float = STAGE_SECONDS, dp=None):
        """dp: the run's dp_secagg.SecAggDP under --dp distributed (its round_params are the round's)."""
        if not (math.isfinite(stage_timeout) and stage_timeout > 0):
            raise ValueError(f"--secagg-stage-timeout must be > 0 seconds, got {stage_timeout}")
        self.config = config
        self.dp = dp
        self.stage_timeout = stage_timeout
        self.round: SecureRound | None = None
        self.abandoned = 0

    def open(self, round_id: int, devices, n_params: int, send: Send, now: float, deadline: float) -> str:
        """Start the round's protocol (SETUP to every selected device); '' or why it cannot run."""
        try:
            setup = secagg.Setup.create(round_id, devices, self.config)
            if self.dp is not None:   # the DDGauss stage: b and z in SETUP, P words per vector
                p = self.dp.round_params
                setup = dataclasses.replace(setup, grid=Grid(setup.grid.clip, dp_secagg.wire_bits(p.bits), len(setup.devices)),
                                            dp_bits=p.bits, dp_z=self.dp.z)
                n_params = p.padded
        except ValueError as exc:
            self.round = None
            return str(exc)
        self.round = SecureRound(setup, n_params, send, now, stage_timeout=self.stage_timeout,
                                 masked_deadline=deadline)
        return ""

    def on_frame(self, device: int, f: wire.Frame, now: float) -> None:
        if self.round is None or f.round != self.round.id:
            raise Rejected("round_closed", f"no secure round {f.round} is open")
        self.round.on_frame(device, f, now)

    def poll(self, now: float) -> bool:
        return self.round is None or self.round.poll(now)

    def close(self, rnd, why: str = "") -> dict:
        """Submit the survivors' exact mean to the round (rounds.Round), or leave the model
        unchanged; the metrics row's secure-aggregation fields."""
        sr, self.round = self.round, None
        if sr is None:
            res = secagg.Result(rnd.round_id, "abandoned", "bad_config", why, [], {}, {})
        elif sr.result is None:   # stopped before the last stage closed
            res = secagg.Result(sr.id, "abandoned", "stopped", f"round {sr.id} abandoned: stopped", [],
                                {}, dict(sr.server.counts))
        else:
            res = sr.result
        if res.outcome == "applied":
            if self.dp is not None:   # the noisy sum of the survivors' clipped deltas, decoded
                noisy = dp_secagg.decode_sum(self.dp.round_params, sr.setup.session, res.sum.sum)
                mean = (noisy / np.float32(len(res.survivors))).astype(np.float32)
            else:
                mean = res.sum.mean(len(res.survivors))
            verdict = rnd.submit_secure_mean(res.survivors, res.round_id, mean)
            if not verdict.accepted:   # cannot happen for a round this module ran: say so loudly
                raise RuntimeError(f"round {res.round_id}: secure mean refused: {verdict.reason} {verdict.detail}")
        else:
            self.abandoned += 1
            log.warning("%s", res.detail or f"round {res.round_id} abandoned: {res.reason}")
        selected = len(sr.setup.devices) if sr is not None else 0
        return {"secagg_outcome": res.outcome, "secagg_reason": res.reason, "secagg_detail": res.detail,
                "survivors": len(res.survivors), "dropped": selected - len(res.survivors),
                "secagg_stages": {k: len(v) for k, v in res.stages.items()},
                "secagg_counts": {k: v for k, v in res.counts.items() if k not in ("accepted",)},
                "secagg_resent": dict(sr.resent) if sr is not None else {}}


# --- the device ----------------------------------------------------------------------------------

@dataclass
class _Upload:
    payload: bytes
    n: int
    next: int = 0
    acked: frozenset = frozenset()
    last: float = 0.0
    wait: float = UPLOAD_WAIT
    done: bool = False


@dataclass
class DeviceSecAgg:
    """A device's side of the secure rounds: follows the aggregator's SETUP of each round.

    send(type, payload, (index, count)) seals and sends a frame of the current round."""

    device_id: int
    send: Callable[[int, bytes, tuple[int, int]], None]
    random_bytes: Callable[[int], bytes] | None = None
    noise_bytes: Callable[[int], bytes] = os.urandom   # distributed DP's noise: the OS CSPRNG (a seed only in tests)
    round: int = 0
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self._reset(0)

    def _reset(self, round_id: int) -> None:
        self.round = round_id
        kw = {} if self.random_bytes is None else {"random_bytes": self.random_bytes}
        self.machine = secagg.Device(self.device_id, **kw)
        self.incoming: dict[int, Assembly] = {}
        self.seen: dict[int, bytes] = {}          # message type -> the bytes answered
        self.answers: dict[int, bytes] = {}       # message type answered -> our answer's (type, bytes)
        self.delta: np.ndarray | None = None
        self.round_key: bytes | None = None
        self.upload: _Upload | None = None
        self.aborted = ""
        self.finished = False                     # the unmask answer went out

    # -- from the client loop --
    def set_delta(self, round_id: int, delta: np.ndarray, round_key: bytes, now: float) -> None:
        """The trained delta of round_id (float32); masked and uploaded once the share list is in."""
        if round_id != self.round:
            self._reset(round_id)
        self.delta, self.round_key = delta, round_key
        self._maybe_upload(now)

    def on_frame(self, f: wire.Frame, now: float) -> None:
        if f.round != self.round:
            if f.type != M.SECAGG_SETUP:
                self.counts["wrong_round"] += 1
                return
            self._reset(f.round)
        if f.type == M.ACK:
            self._on_ack(wire.Ack.unpack(f.payload), now)
            return
        if self.aborted:
            return
        asm = self.incoming.get(f.type)
        if asm is None:
            asm = self.incoming[f.type] = Assembly(f.type, f.chunk_count)
        what = asm.add(f.chunk_index, f.chunk_count, f.payload)
        if what in ("bad_chunk", "conflict"):   # the first copy of a message stands
            self.counts[what] += 1
            return
        if len(asm.parts) < asm.count:
            return
        if f.type in self.seen:
            # the whole message again: the aggregator did not hear our answer (once per resend)
            if what == "duplicate" and f.chunk_index == f.chunk_count - 1:
                self._resend(f.type, now)
            return
        data = asm.data()
        self.seen[f.type] = data
        try:
            self._handle(f.type, data, now)
        except PayloadError as exc:
            self.counts["bad_payload"] += 1
            log.debug("round %d: %s", self.round, exc)
            del self.seen[f.type]
        except secagg.DeviceAbort as exc:
            self.aborted = exc.reason
            self.counts[exc.reason] += 1
            log.info("round %d: secure aggregation stopped on this device: %s", self.round, exc)

    def _handle(self, t: int, data: bytes, now: float) -> None:
        r = self.round
        if t == M.SECAGG_SETUP:
            keys = self.machine.on_setup(parse_setup(r, data))
            self._answer(t, M.SECAGG_KEYS, pack_keys(keys))
        elif t == M.SECAGG_KEY_LIST:
            shares = self.machine.on_key_list(parse_key_list(r, data))
            self._answer(t, M.SECAGG_SHARES, pack_cipher_list(shares.ciphertexts))
        elif t == M.SECAGG_SHARE_LIST:
            self.machine.on_share_list(secagg.ShareList(r, parse_cipher_list(data, "SHARE_LIST")))
            self._maybe_upload(now)
        elif t == M.SECAGG_UNMASK:
            answer = self.machine.on_unmask(secagg.Unmask(r, parse_ids(data, "UNMASK")))
            self._answer(t, M.SECAGG_UNMASK_SHARES, pack_unmask_shares(answer))
            self.finished = True
        else:
            self.counts["unexpected_type"] += 1

    def _answer(self, to: int, msg_type: int, data: bytes) -> None:
        self.answers[to] = (msg_type, data)
        parts = chunks(msg_type, data)
        for i, p in enumerate(parts):
            self.send(msg_type, p, (i, len(parts)))

    def _resend(self, to: int, now: float) -> None:
        # (a repeated SHARE_LIST needs no answer: the upload's ACKs and probe recover lost chunks,
        # and while this device trains the aggregator keeps asking)
        if to in self.answers:
            self._answer(to, *self.answers[to])

    # -- the masked vector --
    def _maybe_upload(self, now: float) -> None:
        if self.upload is not None or self.delta is None or self.machine.stage != "share_list":
            return
        setup = self.machine.setup
        if setup.dp_bits:   # distributed DP: the device's noise share goes in before the masks
            try:
                p = dp_secagg.params(self.delta.size, setup.grid.clip, setup.dp_z, setup.min_survivors,
                                     len(setup.devices), setup.dp_bits)
                vec = dp_secagg.device_vector(p, setup.session, self.delta, self.round_key, self.noise_bytes)
            except ValueError as exc:
                self.aborted = "bad_dp_setup"
                self.counts[self.aborted] += 1
                log.warning("round %d: distributed DP refused: %s", self.round, exc)
                self.delta = None
                return
            msg = self.machine.mask_vector(vec)
        else:
            msg = self.machine.masked_update(self.delta, self.round_key)
        self.delta = None
        n = max(1, math.ceil(len(msg.payload) / MAX_PAYLOAD))
        self.upload = _Upload(msg.payload, n, last=now)
        self._pump(now)

    def _send_chunks(self, indices, now: float) -> None:
        up = self.upload
        for i in indices:
            self.send(M.MASKED_UPDATE, up.payload[i * MAX_PAYLOAD:(i + 1) * MAX_PAYLOAD], (i, up.n))
        up.last = now

    def _pump(self, now: float) -> None:
        up = self.upload
        start = up.next
        while up.next < up.n and up.next - len(up.acked) < UPLOAD_WINDOW:
            up.next += 1
        if up.next > start:
            self._send_chunks(range(start, up.next), now)

    def _on_ack(self, ack: wire.Ack, now: float) -> None:
        up = self.upload
        if up is None or ack.acked_type != M.MASKED_UPDATE or ack.n_bits != up.n:
            self.counts["bad_ack"] += 1
            return
        progress = len(ack.received) > len(up.acked)
        up.acked, up.wait = ack.received, UPLOAD_WAIT
        if len(ack.received) == up.n:
            up.done = True
            return
        if not progress and now - up.last >= UPLOAD_WAIT:
            # nothing new arrived since the last ACK (the aggregator asks after a quiet spell):
            # what it misses below what we sent was lost. Chunks in flight are not resent.
            self._send_chunks([c for c in ack.missing() if c < up.next], now)
        self._pump(now)

    def tick(self, now: float) -> None:
        """No ACK for a while (it may have been lost): send the lowest unacknowledged chunk again as a
        probe; the aggregator answers a chunk it already holds with an ACK, which says what is missing.
        The aggregator also ACKs a device whose upload went quiet, so this is the fallback."""
        up = self.upload
        if up is None or up.done or now - up.last < up.wait:
            return
        first = next((c for c in range(up.next) if c not in up.acked), None)
        if first is not None:
            self._send_chunks([first], now)
        up.last = now
        up.wait = min(UPLOAD_WAIT_MAX, up.wait * 2)


def device_round_key(seed: int, round_id: int, device: int) -> bytes:
    """The device's stochastic-rounding key, derived as `fedtiny simulate --secagg` derives it."""
    return gridmod.derived_round_key(seed, round_id, device)
