"""The fedtiny wire protocol (docs/PROTOCOL.md "Frames"), a thin layer over the one C codec.

Frames, their HMAC-SHA256 tag, the replay window, COBS serial framing and every payload
layout are implemented once, in C (firmware_bridge/, built as fedtiny._wire through cffi), so
a microcontroller and the aggregator run the same code. This module only checks Python
arguments, calls the C functions and names their status codes.

    frame = wire.encode(wire.MsgType.UPDATE_CHUNK, device_id=7, round=3, seq=12,
                        payload=update.blocks[0:1056], key=session_key, chunk=(0, n_chunks),
                        session=4, epoch=2, run=run_tag)
    guard = wire.ReplayGuard(round=3, run=run_tag, epoch=2, session=4)   # one per peer session
    f = wire.decode(frame, session_key, guard)   # -> Frame, or raises FrameError(reason)
    line = wire.cobs_frame(frame)                # bytes for a serial line
    frames = wire.StreamDecoder().feed(chunk_of_serial_bytes)
"""
from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

import numpy as np

from .._wire import ffi, lib

VERSION: int = lib.FT_WIRE_VERSION
HEADER_BYTES: int = lib.FT_WIRE_HEADER_BYTES            # 32
TAG_BYTES: int = lib.FT_WIRE_TAG_BYTES                  # 16 (HMAC-SHA256 truncated to 128 bits)
MAX_FRAME: int = lib.FT_WIRE_MAX_FRAME                  # 1200: one UDP datagram
MAX_PAYLOAD: int = lib.FT_WIRE_MAX_PAYLOAD              # 1152
MIN_KEY_BYTES: int = lib.FT_WIRE_MIN_KEY_BYTES          # 16
MAX_KEY_BYTES: int = lib.FT_WIRE_MAX_KEY_BYTES          # 64
UPDATE_CHUNK_BLOCKS: int = lib.FT_WIRE_UPDATE_CHUNK_BLOCKS  # 8 int8 blocks per update chunk
UPDATE_CHUNK_BYTES: int = lib.FT_WIRE_UPDATE_CHUNK_BYTES    # 1056
MODEL_CHUNK_BYTES: int = lib.FT_WIRE_MODEL_CHUNK_BYTES      # 1152 = 288 float32
REPLAY_WINDOW: int = lib.FT_WIRE_REPLAY_WINDOW          # 64 sequence numbers
RUN_ID_BYTES: int = lib.FT_WIRE_RUN_ID_BYTES            # 8: an aggregator run's random id
NONCE_BYTES: int = lib.FT_WIRE_NONCE_BYTES              # 8: a session's device and aggregator nonces
SESSION_KEY_BYTES: int = lib.FT_WIRE_SESSION_KEY_BYTES  # 32
ARCH_HASH_BYTES: int = lib.FT_WIRE_ARCH_HASH_BYTES      # 16
MAX_LINE: int = MAX_FRAME + 4 + (MAX_FRAME + 4) // 254 + 3  # COBS line of the largest frame


class MsgType(enum.IntEnum):
    HELLO = lib.FT_MSG_HELLO
    OFFER = lib.FT_MSG_OFFER
    MODEL_CHUNK = lib.FT_MSG_MODEL_CHUNK
    UPDATE_CHUNK = lib.FT_MSG_UPDATE_CHUNK
    ACK = lib.FT_MSG_ACK
    ERROR = lib.FT_MSG_ERROR
    RESULT = lib.FT_MSG_RESULT
    PARTIAL_SUM = lib.FT_MSG_PARTIAL_SUM      # reserved (hierarchical aggregation): refused
    MASKED_UPDATE = lib.FT_MSG_MASKED_UPDATE  # device -> aggregator: a SecAgg masked vector, chunked
    WELCOME = lib.FT_MSG_WELCOME              # aggregator -> device: opens a session
    SECAGG_SETUP = lib.FT_MSG_SECAGG_SETUP    # secure aggregation (fedtiny.net.secagg_round): 11..17
    SECAGG_KEYS = lib.FT_MSG_SECAGG_KEYS
    SECAGG_KEY_LIST = lib.FT_MSG_SECAGG_KEY_LIST
    SECAGG_SHARES = lib.FT_MSG_SECAGG_SHARES
    SECAGG_SHARE_LIST = lib.FT_MSG_SECAGG_SHARE_LIST
    SECAGG_UNMASK = lib.FT_MSG_SECAGG_UNMASK
    SECAGG_UNMASK_SHARES = lib.FT_MSG_SECAGG_UNMASK_SHARES


CHUNKED = frozenset({MsgType.MODEL_CHUNK, MsgType.UPDATE_CHUNK, MsgType.MASKED_UPDATE, MsgType.SECAGG_SETUP,
                     MsgType.SECAGG_KEY_LIST, MsgType.SECAGG_SHARES, MsgType.SECAGG_SHARE_LIST,
                     MsgType.SECAGG_UNMASK, MsgType.SECAGG_UNMASK_SHARES})
SECAGG_TYPES = frozenset({MsgType.MASKED_UPDATE} | {t for t in MsgType if t >= MsgType.SECAGG_SETUP})

#: status code -> reason name ("bad_tag", "replay", ...), as the C library names them
REASONS: dict[int, str] = {
    st: ffi.string(lib.ft_wire_status_name(st)).decode()
    for st in range(lib.FT_WIRE_ERR_LAST, lib.FT_WIRE_FRAME_READY + 1)
}
_STATUS = {name: st for st, name in REASONS.items()}

_WHY = {
    "truncated": "fewer bytes than the header announces",
    "bad_magic": "not a fedtiny frame (magic is not 'FT')",
    "bad_version": f"unknown protocol version (this reader speaks version {VERSION})",
    "unknown_type": "unknown or reserved message type",
    "length_mismatch": "trailing bytes, or a payload size this message type does not allow",
    "oversize": f"payload over {MAX_PAYLOAD} bytes or frame over {MAX_FRAME}",
    "bad_chunk": "chunk index/count out of range for this message type",
    "bad_tag": "authentication tag does not match (wrong key or altered bytes)",
    "wrong_round": "authentic, but not for the receiver's current round",
    "replay": "authentic, but this sequence number was already accepted or is too old",
    "stale_run": "the frame names another aggregator run (a fresh --state, or a replay from one)",
    "stale_epoch": "the frame names an earlier (or later) life of this aggregator run: sent before a restart",
    "stale_session": "the frame names a session of this device that is not its current one",
    "bad_crc": "serial frame CRC-32 mismatch",
    "cobs_error": "invalid COBS framing on the serial line",
    "unknown_device": "no key for this device id",
    "bad_payload": "a payload field is out of range",
    "buffer_too_small": "output buffer too small",
    "bad_argument": "invalid argument",
}


class FrameError(ValueError):
    """A frame or payload was refused; .reason is the C library's name for why (see REASONS)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.status = _STATUS.get(reason, 0)
        text = f"frame rejected: {reason} ({_WHY.get(reason, reason)})"
        super().__init__(f"{text}: {detail}" if detail else text)


def _check(status: int, detail: str = "") -> None:
    if status != lib.FT_WIRE_OK:
        raise FrameError(REASONS.get(status, "unknown_status"), detail)


def _uint(value: int, bits: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= int(value) < (1 << bits):
        raise ValueError(f"{name} must be in [0, 2**{bits}), got {value}")
    return int(value)


def _key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise ValueError(f"key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"key must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, got {len(key)}")
    return key


def _bytes(data, name: str) -> bytes:
    try:
        return bytes(memoryview(data).cast("B"))
    except TypeError:
        raise ValueError(f"{name} must be bytes-like, got {type(data).__name__}") from None


# ---- frames ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """A decoded frame: the header fields and the payload bytes."""

    type: MsgType
    device_id: int
    round: int
    seq: int
    chunk_index: int
    chunk_count: int
    payload: bytes
    session: int = 0
    epoch: int = 0
    run: int = 0

    @property
    def chunk(self) -> tuple[int, int]:
        return (self.chunk_index, self.chunk_count)


def encode(msg_type: int, device_id: int, round: int, seq: int, payload, key: bytes,
           chunk: tuple[int, int] = (0, 1), *, session: int = 0, epoch: int = 0, run: int = 0) -> bytes:
    """One authenticated frame: 32-byte header, payload, 16-byte tag (at most 1,200 bytes).

    session, epoch, run: the session the frame belongs to (run = run_tag(run_id)); key is that
    session's key (session_key()), or the device's pre-shared key for a join HELLO (session 0)
    and a WELCOME."""
    payload = _bytes(payload, "payload")
    key = _key(key)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("oversize", f"payload of {len(payload)} bytes, at most {MAX_PAYLOAD}")
    index, count = chunk
    hdr = ffi.new("ft_wire_header *")
    hdr.type = _uint(msg_type, 8, "msg_type")
    hdr.device_id = _uint(device_id, 32, "device_id")
    hdr.round = _uint(round, 32, "round")
    hdr.seq = _uint(seq, 32, "seq")
    hdr.chunk_index = _uint(index, 16, "chunk index")
    hdr.chunk_count = _uint(count, 16, "chunk count")
    hdr.payload_len = len(payload)
    hdr.session = _uint(session, 16, "session")
    hdr.epoch = _uint(epoch, 32, "epoch")
    hdr.run = _uint(run, 32, "run")
    out = ffi.new("uint8_t[]", MAX_FRAME)
    n = ffi.new("size_t *")
    _check(lib.ft_wire_encode(hdr, payload, key, len(key), out, MAX_FRAME, n),
           f"type {msg_type}, chunk {index}/{count}, {len(payload)}-byte payload")
    return bytes(ffi.buffer(out, n[0]))


def _frame(hdr, payload: bytes) -> Frame:
    return Frame(MsgType(hdr.type), hdr.device_id, hdr.round, hdr.seq, hdr.chunk_index,
                 hdr.chunk_count, payload, hdr.session, hdr.epoch, hdr.run)


def peek(frame) -> Frame:
    """Structural checks only, NO authentication: to find the device id (and its key) first.

    Never act on a peeked frame; decode() it.
    """
    data = _bytes(frame, "frame")
    hdr = ffi.new("ft_wire_header *")
    _check(lib.ft_wire_peek(data, len(data), hdr), f"{len(data)}-byte frame")
    return _frame(hdr, data[HEADER_BYTES:HEADER_BYTES + hdr.payload_len])


class ReplayGuard:
    """What a receiver remembers about one peer session: the (run, epoch, session) its frames
    must name, its current round and a 64-wide window of the sequence numbers accepted in it.
    A frame passes only when it names that session and round, with a new seq."""

    __slots__ = ("_g",)

    def __init__(self, round: int = 0, *, run: int = 0, epoch: int = 0, session: int = 0):
        self._g = ffi.new("ft_replay *")
        self.bind(run, epoch, session)
        lib.ft_replay_init(self._g, _uint(round, 32, "round"))

    def bind(self, run: int, epoch: int, session: int) -> None:
        """Start a session: the (run, epoch, session) frames must name; round 0, nothing seen."""
        lib.ft_replay_bind(self._g, _uint(run, 32, "run"), _uint(epoch, 32, "epoch"),
                           _uint(session, 16, "session"))

    @property
    def session(self) -> tuple[int, int, int]:
        """(run, epoch, session) the peer's frames must name."""
        return int(self._g.run), int(self._g.epoch), int(self._g.session)

    def start_round(self, round: int) -> None:
        """Move to a round and forget every sequence number seen (they restart each round)."""
        lib.ft_replay_init(self._g, _uint(round, 32, "round"))

    @property
    def round(self) -> int:
        return int(self._g.round)

    @property
    def highest_seq(self) -> int | None:
        return int(self._g.highest) if self._g.seen else None

    def __repr__(self) -> str:
        return f"ReplayGuard(round={self.round}, highest_seq={self.highest_seq})"


KeyLookup = Union[bytes, Callable[[int], Union[bytes, None]]]
GuardLookup = Union[ReplayGuard, Callable[[int], Union[ReplayGuard, None]], None]


def decode(frame, key: KeyLookup, replay: GuardLookup, *,
           accept_newer_round: bool = False) -> Frame:
    """Check structure, tag (constant time), round and replay; return the Frame or raise
    FrameError with the first failing reason (order: docs/PROTOCOL.md).

    key: the device's key, or a lookup device_id -> key (None: unknown device).
    replay: the device's ReplayGuard, a lookup device_id -> ReplayGuard, or None to skip the
    round/replay check (only for idempotent frames such as HELLO, see PROTOCOL.md). The guard
    moves only when the frame is accepted. accept_newer_round: a frame for a later round is
    accepted and moves the guard there (a device taking the next round's offer).
    """
    data = _bytes(frame, "frame")
    if callable(key) or callable(replay):
        device = peek(data).device_id
    if callable(key):
        found = key(device)
        if found is None:
            raise FrameError("unknown_device", f"device {device}")
        key = found
    if callable(replay):
        replay = replay(device)
        if replay is None:
            raise FrameError("unknown_device", f"device {device} has no replay state")
    key = _key(key)
    if replay is not None and not isinstance(replay, ReplayGuard):
        raise ValueError(f"replay must be a ReplayGuard, a lookup or None, got {type(replay).__name__}")
    hdr = ffi.new("ft_wire_header *")
    payload = ffi.new("uint8_t **")
    guard = replay._g if replay is not None else ffi.NULL
    flags = lib.FT_WIRE_ACCEPT_NEWER_ROUND if accept_newer_round else 0
    status = lib.ft_wire_decode(data, len(data), key, len(key), guard, flags, hdr, payload)
    if status != lib.FT_WIRE_OK:
        detail = f"{len(data)}-byte frame"
        if status in (lib.FT_WIRE_ERR_WRONG_ROUND, lib.FT_WIRE_ERR_REPLAY):
            h = peek(data)
            detail = (f"device {h.device_id} sent round {h.round} seq {h.seq}; "
                      f"receiver is at round {replay.round}, highest seq {replay.highest_seq}")
        elif status in (lib.FT_WIRE_ERR_STALE_RUN, lib.FT_WIRE_ERR_STALE_EPOCH, lib.FT_WIRE_ERR_STALE_SESSION):
            h = peek(data)
            run, epoch, sess = replay.session
            detail = (f"device {h.device_id}: frame names run {h.run:08x} epoch {h.epoch} session "
                      f"{h.session}; receiver is at run {run:08x} epoch {epoch} session {sess}")
        _check(status, detail)
    return _frame(hdr, bytes(ffi.buffer(payload[0], hdr.payload_len)))


# ---- serial framing -------------------------------------------------------------------------

def cobs_frame(frame) -> bytes:
    """The serial line bytes of a frame: 0x00, COBS(frame + CRC-32 LE), 0x00."""
    data = _bytes(frame, "frame")
    cap = len(data) + 4 + (len(data) + 4) // 254 + 3
    out = ffi.new("uint8_t[]", cap)
    n = ffi.new("size_t *")
    _check(lib.ft_cobs_encode_frame(data, len(data), out, cap, n))
    return bytes(ffi.buffer(out, n[0]))


class StreamDecoder:
    """Feed serial bytes in any pieces; get back whole frames (CRC checked, COBS removed).

    Broken input never raises: each broken frame is counted in .errors by reason ("bad_crc",
    "cobs_error", "oversize") and the decoder resynchronises at the next 0x00.
    max_frame is the byte budget: longer frames are dropped as "oversize".
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        if not 1 <= int(max_frame) <= 1 << 20:
            raise ValueError(f"max_frame must be in [1, 2**20], got {max_frame}")
        self.max_frame = int(max_frame)
        self._buf = ffi.new("uint8_t[]", self.max_frame + lib.FT_WIRE_CRC_BYTES)
        self._dec = ffi.new("ft_cobs_decoder *")
        self._len = ffi.new("size_t *")
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.reset()

    def reset(self) -> None:
        """Drop any partial frame (e.g. after reopening the port)."""
        lib.ft_cobs_decoder_init(self._dec, self._buf, self.max_frame + lib.FT_WIRE_CRC_BYTES)

    def feed(self, data) -> list[bytes]:
        frames = []
        feed, dec, n = lib.ft_cobs_feed, self._dec, self._len
        for byte in _bytes(data, "data"):
            status = feed(dec, byte, n)
            if status == lib.FT_WIRE_FRAME_READY:
                frames.append(bytes(ffi.buffer(self._buf, n[0])))
            elif status < 0:
                self.errors[REASONS[status]] += 1
        self.frames += len(frames)
        return frames


# ---- payloads -------------------------------------------------------------------------------

def _pack(fn, struct_ptr, size: int) -> bytes:
    out = ffi.new("uint8_t[]", size)
    _check(fn(struct_ptr, out, size))
    return bytes(out)


def _unpack(fn, ctype: str, payload):
    data = _bytes(payload, "payload")
    m = ffi.new(ctype)
    _check(fn(data, len(data), m), f"{len(data)}-byte {ctype[3:-2]} payload")
    return m


def _fixed(data, size: int, name: str) -> bytes:
    b = _bytes(data, name)
    if len(b) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(b)}")
    return b


@dataclass(frozen=True)
class Hello:
    """Device -> aggregator. n_samples is the FedAvg weight the device will bring.

    A join HELLO (header session 0, the pre-shared key) carries a nonce new for each join; the
    aggregator answers with a WELCOME bound to it. In a session the nonce is zero."""

    n_samples: int
    max_frame: int = MAX_FRAME
    capabilities: int = 1          # bit 0: float32 training, bit 1: int8-weight training
    lib_version: int = 0
    nonce: bytes = bytes(NONCE_BYTES)

    def pack(self) -> bytes:
        m = ffi.new("ft_hello *")
        m.n_samples = _uint(self.n_samples, 32, "n_samples")
        m.max_frame = _uint(self.max_frame, 16, "max_frame")
        m.capabilities = _uint(self.capabilities, 16, "capabilities")
        m.lib_version = _uint(self.lib_version, 32, "lib_version")
        m.nonce = list(_fixed(self.nonce, NONCE_BYTES, "nonce"))
        return _pack(lib.ft_hello_pack, m, lib.FT_HELLO_BYTES)

    @classmethod
    def unpack(cls, payload) -> "Hello":
        m = _unpack(lib.ft_hello_unpack, "ft_hello *", payload)
        return cls(m.n_samples, m.max_frame, m.capabilities, m.lib_version, bytes(m.nonce))


@dataclass(frozen=True)
class Welcome:
    """Aggregator -> device, under the device's pre-shared key: the session that answers the
    join HELLO carrying device_nonce. Both ends derive the session's key from it (session_key)."""

    run_id: bytes                  # 8 bytes: the aggregator's run
    epoch: int                     # its life, >= 1
    session: int                   # 1..65535
    device_nonce: bytes            # echoed from the join HELLO
    agg_nonce: bytes               # fresh for this session

    def _struct(self):
        m = ffi.new("ft_welcome *")
        m.run_id = list(_fixed(self.run_id, RUN_ID_BYTES, "run_id"))
        m.epoch = _uint(self.epoch, 32, "epoch")
        m.session = _uint(self.session, 16, "session")
        m.device_nonce = list(_fixed(self.device_nonce, NONCE_BYTES, "device_nonce"))
        m.agg_nonce = list(_fixed(self.agg_nonce, NONCE_BYTES, "agg_nonce"))
        return m

    def pack(self) -> bytes:
        return _pack(lib.ft_welcome_pack, self._struct(), lib.FT_WELCOME_BYTES)

    @classmethod
    def unpack(cls, payload) -> "Welcome":
        m = _unpack(lib.ft_welcome_unpack, "ft_welcome *", payload)
        return cls(bytes(m.run_id), m.epoch, m.session, bytes(m.device_nonce), bytes(m.agg_nonce))

    @property
    def run(self) -> int:
        """The header's run field for this session: run_tag(run_id)."""
        return run_tag(self.run_id)


def run_tag(run_id: bytes) -> int:
    """The header's u32 run field: the run id's first 4 bytes, little-endian."""
    return int(lib.ft_wire_run_tag(_fixed(run_id, RUN_ID_BYTES, "run_id")))


def session_key(key: bytes, device_id: int, welcome: Welcome) -> bytes:
    """HMAC-SHA256(key, "fedtiny/2 session" || device_id u32 LE || welcome payload): the key
    every frame of the session is tagged with (docs/PROTOCOL.md "Sessions")."""
    key = _key(key)
    out = ffi.new("uint8_t[32]")
    _check(lib.ft_session_key(key, len(key), _uint(device_id, 32, "device_id"), welcome._struct(), out))
    return bytes(out)


#: the codec ids of OFFER (bits per parameter; docs/PROTOCOL.md "OFFER")
CODEC_INT8, CODEC_INT4, CODEC_INT2, CODEC_ROT1, CODEC_FLOAT32 = (
    lib.FT_CODEC_INT8, lib.FT_CODEC_INT4, lib.FT_CODEC_INT2, lib.FT_CODEC_ROT1, lib.FT_CODEC_FLOAT32)
UP_CODECS = frozenset({CODEC_INT8, CODEC_INT4, CODEC_INT2, CODEC_ROT1})
DOWN_CODECS = frozenset({CODEC_FLOAT32, CODEC_INT8, CODEC_INT4})


def _codec(value: int, allowed: frozenset, name: str) -> int:
    v = _uint(value, 8, name)
    if v not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {v}")
    return v


def download_bytes(n_params: int, down_codec: int = CODEC_FLOAT32) -> int:
    """Bytes of the model download: 4 n for float32, header + blocks for int8 / int4."""
    n = int(lib.ft_wire_download_bytes(_codec(down_codec, DOWN_CODECS, "down_codec"), _uint(n_params, 32, "n_params")))
    if n == 0 and n_params > 0:
        raise ValueError(f"a download of {n_params} parameters does not fit the protocol's 32-bit byte count")
    return n


def model_chunks(n_params: int, down_codec: int = CODEC_FLOAT32) -> int:
    """Model chunks of the download of n_params: ceil(download bytes / 1152)."""
    return int(lib.ft_wire_download_chunks(download_bytes(n_params, down_codec)))


def update_chunks(n_params: int, up_codec: int = CODEC_INT8) -> int:
    """Update chunks of an update of n_params: ceil(blocks / blocks per chunk) (int8: 8 per chunk)."""
    return int(lib.ft_wire_update_chunks_codec(_codec(up_codec, UP_CODECS, "up_codec"), _uint(n_params, 32, "n_params")))


def chunk_blocks(up_codec: int) -> int:
    """Whole blocks of the upload codec in one update chunk: 8 int8, 16 int4, 32 int2, 16 rot1."""
    return int(lib.ft_wire_codec_chunk_blocks(_codec(up_codec, UP_CODECS, "up_codec")))


def block_bytes(up_codec: int) -> int:
    return int(lib.ft_wire_codec_block_bytes(_codec(up_codec, UP_CODECS, "up_codec")))


def block_values(up_codec: int) -> int:
    return int(lib.ft_wire_codec_block_values(_codec(up_codec, UP_CODECS, "up_codec")))


@dataclass(frozen=True)
class Offer:
    """Aggregator -> device: the round's model and hyperparameters (round id is in the header)."""

    n_params: int
    model_hash: bytes              # 16 bytes: model_hash(weights)
    lr: float
    epochs: int
    batch_size: int
    deadline_ms: int
    seed: int = 0
    codec_flags: int = 0           # bit 0 stochastic rounding, bit 1 error feedback
    prox_mu: float = 0.0
    fixed_scale: float = 0.0       # > 0: a secure round (--secagg), the clip bound of its grid
    model_chunks: int = -1         # -1: computed from n_params
    update_chunks: int = -1
    arch_hash: bytes = bytes(ARCH_HASH_BYTES)   # Model.arch_hash(): the layer structure
    up_codec: int = CODEC_INT8     # the update the device sends (CODEC_INT8/INT4/INT2/ROT1)
    down_codec: int = CODEC_FLOAT32  # what the model chunks carry (CODEC_FLOAT32/INT8/INT4)
    model_bytes: int = -1          # -1: download_bytes(n_params, down_codec)

    def pack(self) -> bytes:
        m = ffi.new("ft_offer *")
        m.n_params = _uint(self.n_params, 32, "n_params")
        m.up_codec = _codec(self.up_codec, UP_CODECS, "up_codec")
        m.down_codec = _codec(self.down_codec, DOWN_CODECS, "down_codec")
        m.qk = lib.ft_wire_codec_block_values(m.up_codec)
        mb = download_bytes(self.n_params, self.down_codec) if self.model_bytes < 0 else self.model_bytes
        m.model_bytes = _uint(mb, 32, "model_bytes")
        m.codec_version = 1
        m.codec_flags = _uint(self.codec_flags, 8, "codec_flags")
        h = _bytes(self.model_hash, "model_hash")
        if len(h) != 16:
            raise ValueError(f"model_hash must be 16 bytes, got {len(h)}")
        m.model_hash = list(h)
        m.lr = float(self.lr)
        m.epochs = _uint(self.epochs, 16, "epochs")
        m.batch_size = _uint(self.batch_size, 16, "batch_size")
        m.deadline_ms = _uint(self.deadline_ms, 32, "deadline_ms")
        m.seed = _uint(self.seed, 32, "seed")
        mc = model_chunks(self.n_params, self.down_codec) if self.model_chunks < 0 else self.model_chunks
        uc = update_chunks(self.n_params, self.up_codec) if self.update_chunks < 0 else self.update_chunks
        if mc >= 1 << 16:
            raise ValueError(f"a model of {self.n_params} parameters needs {mc} chunks; protocol "
                             f"version {VERSION} carries at most 65535 (18,874,080 parameters)")
        m.model_chunks = _uint(mc, 16, "model_chunks")
        m.update_chunks = _uint(uc, 16, "update_chunks")
        m.prox_mu = float(self.prox_mu)
        m.fixed_scale = float(self.fixed_scale)
        m.arch_hash = list(_fixed(self.arch_hash, ARCH_HASH_BYTES, "arch_hash"))
        return _pack(lib.ft_offer_pack, m, lib.FT_OFFER_BYTES)

    @classmethod
    def unpack(cls, payload) -> "Offer":
        m = _unpack(lib.ft_offer_unpack, "ft_offer *", payload)
        return cls(m.n_params, bytes(m.model_hash), m.lr, m.epochs, m.batch_size, m.deadline_ms,
                   m.seed, m.codec_flags, m.prox_mu, m.fixed_scale, m.model_chunks,
                   m.update_chunks, bytes(m.arch_hash), m.up_codec, m.down_codec, m.model_bytes)


@dataclass(frozen=True)
class Result:
    """Round result / metrics. Device -> aggregator (before its update chunks): its weight
    n_samples, training loss, steps and the Int8Update header fields. Aggregator -> device
    (round closed): total weight, clients averaged, evaluation loss/accuracy (NaN: none)."""

    n_samples: int
    n_clients: int = 1
    loss: float = float("nan")
    accuracy: float = float("nan")
    steps: int = 0
    update_seed: int = 0
    update_flags: int = 0
    update_chunks: int = 0

    def pack(self) -> bytes:
        m = ffi.new("ft_result *")
        m.n_samples = _uint(self.n_samples, 32, "n_samples")
        m.n_clients = _uint(self.n_clients, 32, "n_clients")
        m.loss = float(self.loss)
        m.accuracy = float(self.accuracy)
        m.steps = _uint(self.steps, 32, "steps")
        m.update_seed = _uint(self.update_seed, 32, "update_seed")
        m.update_flags = _uint(self.update_flags, 8, "update_flags")
        m.update_chunks = _uint(self.update_chunks, 16, "update_chunks")
        return _pack(lib.ft_result_pack, m, lib.FT_RESULT_BYTES)

    @classmethod
    def unpack(cls, payload) -> "Result":
        m = _unpack(lib.ft_result_unpack, "ft_result *", payload)
        return cls(m.n_samples, m.n_clients, m.loss, m.accuracy, m.steps, m.update_seed,
                   m.update_flags, m.update_chunks)


@dataclass(frozen=True)
class Ack:
    """Which chunks of a transfer arrived: chunks first .. first+n_bits-1, as a bitmap.

    The sender resends only missing(); an Ack with n_bits = 0 asks for everything.
    """

    acked_type: int                # MsgType.MODEL_CHUNK or MsgType.UPDATE_CHUNK
    first: int
    n_bits: int
    received: frozenset = field(default_factory=frozenset)

    @classmethod
    def for_chunks(cls, acked_type: int, received: Iterable[int], n_chunks: int,
                   first: int = 0) -> "Ack":
        got = frozenset(int(c) for c in received if first <= int(c) < first + n_chunks)
        return cls(int(acked_type), first, n_chunks, got)

    def missing(self) -> list[int]:
        return [c for c in range(self.first, self.first + self.n_bits) if c not in self.received]

    def pack(self) -> bytes:
        first = _uint(self.first, 16, "first")
        n_bits = _uint(self.n_bits, 16, "n_bits")
        size = lib.FT_ACK_HEADER_BYTES + (n_bits + 7) // 8
        out = ffi.new("uint8_t[]", max(size, 1))
        n = ffi.new("size_t *")
        _check(lib.ft_ack_init(out, size, _uint(self.acked_type, 8, "acked_type"), first, n_bits, n),
               f"ack of {n_bits} chunks from {first}")
        for c in sorted(self.received):
            _check(lib.ft_ack_set(out, n[0], _uint(c, 16, "chunk")),
                   f"chunk {c} outside [{first}, {first + n_bits})")
        return bytes(ffi.buffer(out, n[0]))

    @staticmethod
    def pack_flags(acked_type: int, received: np.ndarray, first: int = 0) -> bytes:
        """The payload of an Ack whose bit i is received[i] (bool per chunk), without building a
        set: ft_ack_init lays out the header and an empty bitmap, the bitmap bytes are then the
        flags packed LSB first (docs/PROTOCOL.md "ACK"). For the aggregator's frequent ACKs."""
        flags = np.ascontiguousarray(received, dtype=bool)
        n_bits = _uint(flags.size, 16, "n_bits")
        size = lib.FT_ACK_HEADER_BYTES + (n_bits + 7) // 8
        out = ffi.new("uint8_t[]", max(size, 1))
        n = ffi.new("size_t *")
        _check(lib.ft_ack_init(out, size, _uint(acked_type, 8, "acked_type"), _uint(first, 16, "first"), n_bits, n),
               f"ack of {n_bits} chunks from {first}")
        bitmap = np.packbits(flags, bitorder="little").tobytes()
        ffi.memmove(out + lib.FT_ACK_HEADER_BYTES, bitmap, len(bitmap))
        return bytes(ffi.buffer(out, n[0]))

    @classmethod
    def unpack(cls, payload) -> "Ack":
        data = _bytes(payload, "payload")
        t, first, nb = ffi.new("uint8_t *"), ffi.new("uint16_t *"), ffi.new("uint16_t *")
        bitmap = ffi.new("uint8_t **")
        _check(lib.ft_ack_parse(data, len(data), t, first, nb, bitmap), f"{len(data)}-byte ack")
        bits = np.unpackbits(np.frombuffer(ffi.buffer(bitmap[0], (nb[0] + 7) // 8), np.uint8),
                             bitorder="little")[: nb[0]]
        return cls(t[0], first[0], nb[0], frozenset((np.flatnonzero(bits) + first[0]).tolist()))


@dataclass(frozen=True)
class ErrorMsg:
    """Either way: a status code (an ft_wire_status, or >= 100 an application code) + text."""

    code: int
    text: str = ""

    def pack(self) -> bytes:
        if not -(1 << 15) <= int(self.code) < (1 << 15):
            raise ValueError(f"error code must fit in int16, got {self.code}")
        text = self.text.encode("utf-8")
        out = ffi.new("uint8_t[]", lib.FT_ERROR_HEADER_BYTES + len(text))
        n = ffi.new("size_t *")
        _check(lib.ft_error_pack(int(self.code), text, len(text), out, len(out), n))
        return bytes(ffi.buffer(out, n[0]))

    @classmethod
    def unpack(cls, payload) -> "ErrorMsg":
        data = _bytes(payload, "payload")
        code, text, n = ffi.new("int16_t *"), ffi.new("uint8_t **"), ffi.new("size_t *")
        _check(lib.ft_error_parse(data, len(data), code, text, n), f"{len(data)}-byte error")
        return cls(code[0], bytes(ffi.buffer(text[0], n[0])).decode("utf-8", errors="replace"))


# ---- hashing and chunk slicing ---------------------------------------------------------------

def sha256(data) -> bytes:
    """SHA-256 by the C library (the same code the firmware runs)."""
    data = _bytes(data, "data")
    out = ffi.new("uint8_t[32]")
    lib.ft_sha256(data, len(data), out)
    return bytes(out)


def hmac_sha256(key, data) -> bytes:
    """HMAC-SHA256 by the C library; any key length (RFC 2104)."""
    key, data = _bytes(key, "key"), _bytes(data, "data")
    out = ffi.new("uint8_t[32]")
    lib.ft_hmac_sha256(key, len(key), data, len(data), out)
    return bytes(out)


def model_hash(weights: np.ndarray) -> bytes:
    """The offer's model hash: SHA-256 of the float32 little-endian weights, first 16 bytes."""
    w = np.ascontiguousarray(weights, dtype="<f4")
    out = ffi.new("uint8_t[32]")
    lib.ft_sha256(ffi.from_buffer(w), w.nbytes, out)
    return bytes(out)[:16]


def model_chunk(weights: np.ndarray, index: int) -> bytes:
    """Payload of model chunk `index`: float32 LE bytes [1152 i, 1152 (i+1))."""
    w = np.ascontiguousarray(weights, dtype="<f4")
    n = model_chunks(w.size)
    if not 0 <= index < n:
        raise ValueError(f"model chunk {index} out of range: {w.size} parameters make {n} chunks")
    return memoryview(w).cast("B")[index * MODEL_CHUNK_BYTES:(index + 1) * MODEL_CHUNK_BYTES].tobytes()


def update_chunk(blocks, index: int, up_codec: int = CODEC_INT8) -> bytes:
    """Payload of update chunk `index`: the update's block bytes of blocks [k i, k i + k), k =
    chunk_blocks(up_codec) (int8: 8 blocks, 1,056 bytes)."""
    size = chunk_blocks(up_codec) * block_bytes(up_codec)
    mv = memoryview(blocks).cast("B")
    n = (len(mv) + size - 1) // size
    if not 0 <= index < n:
        raise ValueError(f"update chunk {index} out of range: {len(mv)} block bytes make {n} chunks")
    return mv[index * size:(index + 1) * size].tobytes()


def self_test() -> None:
    """The C library's known-answer self-test (SHA-256, HMAC, CRC-32); raises if it fails."""
    _check(lib.ft_wire_self_test(), "known-answer self-test of the C wire library")


self_test()  # microseconds; a miscompiled codec must not talk to anyone

__all__ = [
    "VERSION", "HEADER_BYTES", "TAG_BYTES", "MAX_FRAME", "MAX_PAYLOAD", "MIN_KEY_BYTES",
    "MAX_KEY_BYTES", "UPDATE_CHUNK_BLOCKS", "UPDATE_CHUNK_BYTES", "MODEL_CHUNK_BYTES",
    "REPLAY_WINDOW", "RUN_ID_BYTES", "NONCE_BYTES", "SESSION_KEY_BYTES", "ARCH_HASH_BYTES", "MAX_LINE",
    "MsgType", "CHUNKED", "REASONS", "FrameError", "Frame", "encode", "peek", "decode", "ReplayGuard",
    "cobs_frame", "StreamDecoder", "Hello", "Welcome", "run_tag", "session_key", "Offer", "Result",
    "Ack", "ErrorMsg", "model_chunks", "update_chunks", "download_bytes", "chunk_blocks", "block_bytes",
    "block_values", "CODEC_INT8", "CODEC_INT4", "CODEC_INT2", "CODEC_ROT1", "CODEC_FLOAT32", "UP_CODECS", "DOWN_CODECS", "sha256", "hmac_sha256", "model_hash",
    "model_chunk", "update_chunk", "self_test",
]
