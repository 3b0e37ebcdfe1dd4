"""The int8 update codec: a float32 model delta as int8 blocks with one float32 scale per block.

Wire layout (little-endian, docs/PROTOCOL.md "Int8Update"):
    header  16 bytes: magic b"FTQ8", version u8, flags u8, block size u16, n_params u32, seed u32
    blocks  ceil(n/QK) x {float32 d; int8 q[QK]}, value_i = d * q_i, last block zero-padded
The bytes are encoded and read by the C kernels; this module only frames and checks them.
"""
from __future__ import annotations

import struct

import numpy as np

from . import _core
from ._wire import ffi as _wire_ffi, lib as _wire_lib

QK: int = _core.QK                  # parameters per block
BLOCK_BYTES: int = _core.BLOCK_BYTES  # 4-byte scale + QK int8
MAGIC = b"FTQ8"
VERSION = 1
HEADER = struct.Struct("<4sBBHII")
HEADER_BYTES = HEADER.size
FLAG_STOCHASTIC = 0x01
FLAG_ERROR_FEEDBACK = 0x02
_ROUNDING = {"nearest": 0, "stochastic": 1}
# The largest scale whose 127 * d is finite in float32. FLT_MAX / 127 rounds UP to a float32 whose
# 127 * d is Inf, so the bound is the float32 just below it (tests/test_boundaries.py checks both).
MAX_SCALE = np.nextafter(np.float32(np.finfo(np.float32).max / np.float32(127)), np.float32(0))
BLOCK_DTYPE = np.dtype([("d", "<f4"), ("q", "i1", (QK,))])
assert BLOCK_DTYPE.itemsize == BLOCK_BYTES
_Q8_REASONS = {r: _wire_ffi.string(_wire_lib.ft_rx_reason_name(r)).decode() for r in range(_wire_lib.FT_RX_N_REASONS)}




def check_blocks(data: bytes | bytearray | memoryview) -> str | None:
    """Why these int8 blocks must not be decoded or accumulated, or None when they may: the one
    reader rule (a scale outside [0, FLT_MAX/127] or NaN: "bad_scale"; an int8 -128: "bad_value";
    not whole blocks: "bad_length"). In C (firmware_bridge/host/ft_rx.c ft_q8_check_blocks),
    because the aggregator's C receive path applies it to every update chunk it stages."""
    mv = memoryview(data).cast("B")
    if len(mv) == 0:
        return "bad_length"
    reason = _wire_lib.ft_q8_check_blocks(_wire_ffi.from_buffer(mv), len(mv))
    return None if reason == 0 else _Q8_REASONS[reason]


def nblocks(n_params: int) -> int:
    return (n_params + QK - 1) // QK


def wire_size(n_params: int) -> int:
    """Bytes of an encoded update of n_params parameters, header included."""
    return HEADER_BYTES + nblocks(n_params) * BLOCK_BYTES


class _Encoded:
    """An encoded update's wire bytes (header included) and its parameter count: shared by the formats."""

    __slots__ = ("_buf", "_n", "flags", "seed")

    def __init__(self, buf: np.ndarray, n_params: int, flags: int = 0, seed: int = 0):
        self._buf = buf  # uint8, exactly the format's wire size, header included
        self._n = n_params
        self.flags = flags
        self.seed = seed

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes)

    @property
    def blocks(self) -> memoryview:
        """The block bytes (no header): what add_chunk takes, sliced at block boundaries."""
        return memoryview(self._buf)[HEADER_BYTES:]

    def to_bytes(self) -> bytes:
        return self._buf.tobytes()


def _check_residual(residual: np.ndarray, delta: np.ndarray) -> None:
    if not isinstance(residual, np.ndarray) or residual.dtype != np.float32 or residual.shape != delta.shape:
        raise ValueError(f"residual must be a float32 array of shape {delta.shape}")
    if not residual.flags.c_contiguous or not residual.flags.writeable:
        raise ValueError("residual must be C-contiguous and writable (it is updated in place)")
    # The kernel writes the residual block by block; check first so a bad delta leaves it intact.
    if not np.isfinite(delta).all():
        raise ValueError("delta holds NaN or Inf: refusing to encode a non-finite update")


class Int8Update(_Encoded):
    """One encoded update; holds only its wire bytes (about 1.03 bytes per parameter)."""

    __slots__ = ()

    @property
    def scales(self) -> np.ndarray:
        return self._buf[HEADER_BYTES:].view(BLOCK_DTYPE)["d"]

    @property
    def values(self) -> np.ndarray:
        """The int8 values, n_params of them (a view)."""
        return self._buf[HEADER_BYTES:].view(BLOCK_DTYPE)["q"].reshape(-1)[: self._n]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> "Int8Update":
        mv = memoryview(data).cast("B")
        if len(mv) < HEADER_BYTES:
            raise ValueError(f"int8 update truncated: {len(mv)} bytes, the header alone is {HEADER_BYTES}")
        magic, version, flags, qk, n, seed = HEADER.unpack_from(mv)
        if magic != MAGIC:
            raise ValueError(f"not an int8 update: magic {bytes(magic)!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ValueError(f"int8 update version {version} is not supported (this fedtiny reads version {VERSION})")
        if qk != QK:
            raise ValueError(f"int8 update block size {qk} is not supported (this fedtiny uses {QK})")
        if n == 0:
            raise ValueError("int8 update holds 0 parameters")
        expected = wire_size(n)
        if len(mv) != expected:
            what = "truncated" if len(mv) < expected else "has trailing bytes"
            raise ValueError(f"int8 update {what}: {len(mv)} bytes, {n} parameters need {expected}")
        problem = check_blocks(mv[HEADER_BYTES:])
        if problem == "bad_scale":
            raise ValueError("int8 update corrupted: a block scale is negative, NaN, Inf or above FLT_MAX/127")
        if problem == "bad_value":
            raise ValueError("int8 update corrupted: value -128 is outside the codec's range [-127, 127]")
        return cls(np.frombuffer(mv, dtype=np.uint8).copy(), n, flags, seed)

    def decode(self) -> np.ndarray:
        out = np.empty(self._n, dtype=np.float32)
        _core.dequantize_q8(self.blocks, self._n, out)
        return out

    def __repr__(self) -> str:
        return f"Int8Update(n_params={self._n}, nbytes={self.nbytes})"


def check_delta(delta: np.ndarray, name: str = "delta") -> np.ndarray:
    if not isinstance(delta, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(delta).__name__}")
    if delta.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {delta.dtype}")
    if delta.ndim != 1:
        raise ValueError(f"{name} must be 1-D (the flat parameter vector), got shape {delta.shape}")
    if delta.size == 0:
        raise ValueError(f"{name} is empty")
    if delta.size >= 2**32:
        raise ValueError(f"{name} has {delta.size} values; the codec counts parameters in 32 bits")
    return np.ascontiguousarray(delta)


def encode(delta: np.ndarray, *, rounding: str = "nearest", seed: int = 0,
           residual: np.ndarray | None = None) -> Int8Update:
    """Quantize a float32 delta to int8 blocks in one C pass.

    rounding: "nearest" (half to even) or "stochastic" (unbiased; the same seed gives the same
    bytes on every platform and SIMD path). residual: error feedback buffer (float32, same
    length), updated in place to v - decode(q) where v = delta + residual.
    """
    delta = check_delta(delta)
    if rounding not in _ROUNDING:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    n = delta.size
    flags = (FLAG_STOCHASTIC if rounding == "stochastic" else 0) | (FLAG_ERROR_FEEDBACK if residual is not None else 0)
    buf = np.empty(wire_size(n), dtype=np.uint8)
    HEADER.pack_into(buf, 0, MAGIC, VERSION, flags, QK, n, int(seed) & 0xFFFFFFFF)
    if residual is not None:
        _check_residual(residual, delta)
    try:
        _core.quantize_q8(delta, residual, _ROUNDING[rounding], int(seed), buf[HEADER_BYTES:])
    except ValueError:
        raise ValueError("delta holds NaN or Inf: refusing to encode a non-finite update") from None
    return Int8Update(buf, n, flags, int(seed) & 0xFFFFFFFF)


# ---- sub-byte updates (docs/PROTOCOL.md "Sub-byte updates") ---------------------------------
# The same 16-byte header as the int8 update; the magic names the format, the seed field is the
# one the encoder used (the rotated codec needs it to decode), the block size field is the
# format's values per block. Blocks are encoded and read by the C kernels.

class LowbitFormat:
    """One sub-byte format: its C id, magic, block geometry, largest legal scale and reader rule."""

    __slots__ = ("name", "fmt", "magic", "block_values", "block_bytes", "max_scale", "grid")

    def __init__(self, name: str, fmt: int, magic: bytes, qmax: int, grid: str):
        self.name, self.fmt, self.magic, self.grid = name, fmt, magic, grid
        self.block_values = _core.lowbit_block_values(fmt)
        self.block_bytes = _core.lowbit_block_bytes(fmt)
        # a decoded value is at most qmax * scale: keep it finite
        self.max_scale = float(np.float32(np.finfo(np.float32).max / np.float32(qmax)))

    def check_blocks(self, data: bytes | bytearray | memoryview) -> str | None:
        """The reader rule of this format, as check_blocks for int8: "bad_length" (not whole blocks),
        "bad_scale" (negative, NaN, Inf or above max_scale), "bad_value" (a code outside the grid:
        4-bit code 0 or 2-bit code 3; every bit pattern of the rotated codec is a value). In C
        (firmware_bridge/host/ft_rx.c ft_codec_check_blocks): the aggregator's receive path applies
        it to every update chunk it stages."""
        mv = memoryview(data).cast("B")
        if len(mv) == 0:
            return "bad_length"
        reason = _wire_lib.ft_codec_check_blocks(self.fmt, _wire_ffi.from_buffer(mv), len(mv))
        return None if reason == 0 else _Q8_REASONS[reason]

    def nblocks(self, n_params: int) -> int:
        return (n_params + self.block_values - 1) // self.block_values

    def wire_size(self, n_params: int) -> int:
        return HEADER_BYTES + self.nblocks(n_params) * self.block_bytes


LOWBIT_FORMATS: dict[str, LowbitFormat] = {
    "int4": LowbitFormat("int4", 4, b"FTQ4", 7, "q in [-7, 7], value = d * q"),
    "int2": LowbitFormat("int2", 2, b"FTQ2", 1, "q in {-1, 0, 1}, value = d * q"),
    # |decoded value| <= scale * RK (the Hadamard transform of +-1 values)
    "1bit-rot": LowbitFormat("1bit-rot", 1, b"FTR1", _core.RK, "sign after rotation, value = S * (D H b)_i"),
}
_BY_MAGIC = {f.magic: f for f in LOWBIT_FORMATS.values()}


class LowbitUpdate(_Encoded):
    """One encoded sub-byte update; holds only its wire bytes (header included)."""

    __slots__ = ("format",)

    def __init__(self, buf: np.ndarray, n_params: int, fmt: LowbitFormat, flags: int = 0, seed: int = 0):
        super().__init__(buf, n_params, flags, seed)
        self.format = fmt

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> "LowbitUpdate":
        mv = memoryview(data).cast("B")
        if len(mv) < HEADER_BYTES:
            raise ValueError(f"sub-byte update truncated: {len(mv)} bytes, the header alone is {HEADER_BYTES}")
        magic, version, flags, bv, n, seed = HEADER.unpack_from(mv)
        fmt = _BY_MAGIC.get(bytes(magic))
        if fmt is None:
            raise ValueError(f"not a sub-byte update: magic {bytes(magic)!r}, expected one of "
                             f"{', '.join(repr(m) for m in _BY_MAGIC)}")
        if version != VERSION:
            raise ValueError(f"{fmt.name} update version {version} is not supported (this fedtiny reads version {VERSION})")
        if bv != fmt.block_values:
            raise ValueError(f"{fmt.name} update block size {bv} is not supported (this fedtiny uses {fmt.block_values})")
        if n == 0:
            raise ValueError(f"{fmt.name} update holds 0 parameters")
        expected = fmt.wire_size(n)
        if len(mv) != expected:
            what = "truncated" if len(mv) < expected else "has trailing bytes"
            raise ValueError(f"{fmt.name} update {what}: {len(mv)} bytes, {n} parameters need {expected}")
        problem = fmt.check_blocks(mv[HEADER_BYTES:])
        if problem == "bad_scale":
            raise ValueError(f"{fmt.name} update corrupted: a block scale is negative, NaN, Inf or above {fmt.max_scale:.4g}")
        if problem == "bad_value":
            raise ValueError(f"{fmt.name} update corrupted: a code outside the grid ({fmt.grid})")
        return cls(np.frombuffer(mv, dtype=np.uint8).copy(), n, fmt, flags, seed)

    def decode(self) -> np.ndarray:
        out = np.empty(self._n, dtype=np.float32)
        _core.dequantize_lowbit(self.format.fmt, self.blocks, self._n, self.seed, out)
        return out

    def __repr__(self) -> str:
        return f"LowbitUpdate({self.format.name}, n_params={self._n}, nbytes={self.nbytes})"


def encode_lowbit(delta: np.ndarray, fmt: str, *, rounding: str = "nearest", seed: int = 0,
                  residual: np.ndarray | None = None) -> LowbitUpdate:
    """Quantize a float32 delta to a sub-byte format ("int4", "int2", "1bit-rot") in one C pass.

    rounding: "nearest" or "stochastic" (int4/int2; the rotated codec's sign is deterministic).
    seed: the stochastic stream, or the rotation's signs; only its low 32 bits are used (they go
    in the header so a reader can decode). residual: error feedback, as in encode().
    """
    delta = check_delta(delta)
    if fmt not in LOWBIT_FORMATS:
        raise ValueError(f"sub-byte format must be one of {', '.join(LOWBIT_FORMATS)}, got {fmt!r}")
    f = LOWBIT_FORMATS[fmt]
    if rounding not in _ROUNDING:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    if fmt == "1bit-rot" and rounding != "nearest":
        raise ValueError("the rotated 1-bit codec has no stochastic rounding (its sign is deterministic)")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    seed32 = int(seed) & 0xFFFFFFFF
    n = delta.size
    flags = (FLAG_STOCHASTIC if rounding == "stochastic" else 0) | (FLAG_ERROR_FEEDBACK if residual is not None else 0)
    buf = np.empty(f.wire_size(n), dtype=np.uint8)
    HEADER.pack_into(buf, 0, f.magic, VERSION, flags, f.block_values, n, seed32)
    if residual is not None:
        _check_residual(residual, delta)
    try:
        _core.quantize_lowbit(f.fmt, delta, residual, _ROUNDING[rounding], seed32, buf[HEADER_BYTES:])
    except ValueError:
        raise ValueError("delta holds NaN or Inf: refusing to encode a non-finite update") from None
    return LowbitUpdate(buf, n, f, flags, seed32)


def read_update(data: bytes | bytearray | memoryview) -> "Int8Update | LowbitUpdate":
    """Any encoded update from its bytes, by its magic: the one entry for every path that accepts bytes."""
    head = bytes(memoryview(data).cast("B")[:4])
    return Int8Update.from_bytes(data) if head == MAGIC else LowbitUpdate.from_bytes(data)
