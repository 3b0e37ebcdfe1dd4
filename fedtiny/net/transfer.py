"""What crosses the network each round, in both directions, by codec (docs/PROTOCOL.md "OFFER").

The OFFER names two codecs by their wire id (bits per parameter):

- the upload (`--codec` of `fedtiny aggregate`): int8 (8), int4 (4), int2 (2) or the rotated
  1-bit codec (1), with the rounding and error-feedback flags, exactly the encoders of `fedtiny
  simulate --codec` (fedtiny.codec); update chunks hold whole blocks of that codec;
- the download (`--down-codec`): the float32 model (32) or the whole model as int8 (8) / int4 (4)
  blocks with error feedback on the aggregator (fedtiny.broadcast.Broadcaster); the model chunks
  carry the message's bytes, header included, and OFFER's model hash is the hash of the float32
  copy a device decodes from them, identical bit for bit on the aggregator.

Every download is self-contained (the whole model, never a delta), so a device that missed any
number of rounds, or joins for the first time, gets the same bytes as every other device of
the round and needs no base version: one message per round, cached for all devices.
"""
from __future__ import annotations

import numpy as np

from .. import broadcast, codec
from . import wire

#: upload codec names (as `fedtiny simulate --codec`, float32 aside) -> (wire id, OFFER codec_flags)
UPLOAD_CODECS: dict[str, tuple[int, int]] = {}
for _name, _id in (("int8", wire.CODEC_INT8), ("int4", wire.CODEC_INT4), ("int2", wire.CODEC_INT2)):
    UPLOAD_CODECS[_name] = (_id, 0)
    UPLOAD_CODECS[f"{_name}-stochastic"] = (_id, codec.FLAG_STOCHASTIC)
    UPLOAD_CODECS[f"{_name}-ef"] = (_id, codec.FLAG_ERROR_FEEDBACK)
UPLOAD_CODECS["1bit-rot"] = (wire.CODEC_ROT1, 0)
UPLOAD_CODECS["1bit-rot-ef"] = (wire.CODEC_ROT1, codec.FLAG_ERROR_FEEDBACK)

#: download codec names (broadcast.DOWN_CODECS) -> wire id
DOWN_CODECS: dict[str, int] = {"float32": wire.CODEC_FLOAT32, "int8": wire.CODEC_INT8, "int4": wire.CODEC_INT4}
assert set(DOWN_CODECS) == set(broadcast.DOWN_CODECS)

_FORMAT = {wire.CODEC_INT4: codec.LOWBIT_FORMATS["int4"], wire.CODEC_INT2: codec.LOWBIT_FORMATS["int2"],
           wire.CODEC_ROT1: codec.LOWBIT_FORMATS["1bit-rot"]}
_DOWN_NAME = {v: k for k, v in DOWN_CODECS.items()}


def upload_format(up_codec: int) -> tuple[bytes, int, int]:
    """(magic, values per block, bytes per block) of an upload codec's encoded update."""
    if up_codec == wire.CODEC_INT8:
        return codec.MAGIC, codec.QK, codec.BLOCK_BYTES
    f = _FORMAT.get(up_codec)
    if f is None:
        raise ValueError(f"upload codec {up_codec} is not one of {sorted(wire.UP_CODECS)}")
    return f.magic, f.block_values, f.block_bytes


def update_nbytes(n_params: int, up_codec: int) -> int:
    """Bytes of an encoded update of n_params (header included)."""
    _, bv, bb = upload_format(up_codec)
    return codec.HEADER_BYTES + -(-int(n_params) // bv) * bb


def staged_update(up_codec: int, buf: np.ndarray, n_params: int) -> codec.Int8Update | codec.LowbitUpdate:
    """The update held in a staging slot (header + blocks, already checked chunk by chunk), without a copy."""
    flags, seed = int(buf[5]), int.from_bytes(bytes(buf[12:16]), "little")
    if up_codec == wire.CODEC_INT8:
        return codec.Int8Update(buf, n_params, flags, seed)
    return codec.LowbitUpdate(buf, n_params, _FORMAT[up_codec], flags, seed)


def encode_update(up_codec: int, codec_flags: int, delta: np.ndarray, *, seed: int,
                  residual: np.ndarray | None) -> codec.Int8Update | codec.LowbitUpdate:
    """A device's update as the OFFER asks (the encoders of `fedtiny simulate --codec`)."""
    rounding = "stochastic" if codec_flags & codec.FLAG_STOCHASTIC else "nearest"
    if up_codec == wire.CODEC_INT8:
        return codec.encode(delta, rounding=rounding, seed=seed, residual=residual)
    f = _FORMAT.get(up_codec)
    if f is None:
        raise ValueError(f"upload codec {up_codec} is not one of {sorted(wire.UP_CODECS)}")
    return codec.encode_lowbit(delta, f.name, rounding=rounding, seed=seed, residual=residual)


def decode_download(data: bytes | bytearray | memoryview, n_params: int, down_codec: int) -> np.ndarray:
    """A device's model from the downloaded bytes (float32: the bytes themselves; int8 / int4: the
    message decoded by the C kernel the aggregator ran). Raises ValueError for a message that
    breaks its format's reader rule."""
    name = _DOWN_NAME.get(down_codec)
    if name is None:
        raise ValueError(f"download codec {down_codec} is not one of {sorted(wire.DOWN_CODECS)}")
    return broadcast.receive(data, n_params, name)


class Download:
    """The aggregator's side: one message per round for every device (the cached bytes), its
    reference copy (what devices train from) and the error-feedback residual, kept in the
    checkpoint so that a restarted aggregator sends the same bytes as one that never stopped."""

    STATE_KEY = "download_residual"

    def __init__(self, down_codec: str, n_params: int):
        self.name = down_codec
        self.codec = DOWN_CODECS[down_codec]
        self.link = broadcast.Broadcaster(down_codec, n_params)
        self.message = b""

    def publish(self, params: np.ndarray) -> np.ndarray:
        """Encode this round's model; returns the reference copy devices will start from."""
        ref = self.link.publish(params)
        self.message = self.link.to_bytes()
        return ref

    def state(self) -> dict[str, np.ndarray]:
        r = self.link.residual
        return {} if r is None else {self.STATE_KEY: r.copy()}

    def load_state(self, state: dict) -> dict:
        """Takes its residual out of a checkpoint's optimizer dict; returns the rest."""
        rest = {k: v for k, v in state.items() if k != self.STATE_KEY}
        saved = state.get(self.STATE_KEY)
        residual = self.link.residual
        if saved is not None and residual is not None:
            saved = np.asarray(saved, dtype=np.float32)
            if saved.shape != residual.shape:
                raise ValueError(f"the checkpoint's download residual has {saved.size} values, the model {residual.size}")
            residual[:] = saved
        return rest
