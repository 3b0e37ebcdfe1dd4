"""The model download: what the aggregator sends each round and the copy every device starts from.

`float32`: the model itself (4 bytes per parameter). `int8` / `int4`: the whole model as the
codec's blocks (about 1.03 / 0.53 bytes per parameter), with error feedback kept on the
aggregator: it encodes v = w + e and keeps e := v - decode(message), so the copies devices start
from average to the aggregator's float32 model over the rounds. `reference` is decode(message),
computed by the same C kernel a device runs on the same bytes: the aggregator's copy and every
device's agree bit for bit, and the model hash in OFFER is the hash of that copy.

Each message is the whole model, not a delta against the version a device holds: with C = 0.1 a
device has missed about 9 rounds of 10 when it is sampled again, so a chain of per-round deltas
would cost about 10x and a float32 fallback 4 bytes per parameter; a self-contained int8 model is
1.03 bytes per parameter whatever a device missed (docs/PROTOCOL.md "Compressed download").
"""
from __future__ import annotations

import numpy as np

from . import _core, codec

DOWN_CODECS = ("float32", "int8", "int4")


class Broadcaster:
    """The aggregator's side of the download: publish(w) each round; `reference` is what devices hold."""

    def __init__(self, down_codec: str, n_params: int):
        if down_codec not in DOWN_CODECS:
            raise ValueError(f"--down-codec must be one of {', '.join(DOWN_CODECS)}, got {down_codec!r}")
        self.codec = down_codec
        self.n_params = int(n_params)
        self.reference = np.zeros(self.n_params, dtype=np.float32)
        self._residual = np.zeros(self.n_params, dtype=np.float32) if down_codec != "float32" else None
        self.message: codec.Int8Update | codec.LowbitUpdate | None = None

    @property
    def residual(self) -> np.ndarray | None:
        """The error-feedback residual (None for float32): the aggregator's state beside the model."""
        return self._residual

    @property
    def message_bytes(self) -> int:
        """Bytes one device downloads for the current model (header included)."""
        return 4 * self.n_params if self.message is None else self.message.nbytes

    def publish(self, params: np.ndarray) -> np.ndarray:
        """Encode the aggregator's model for this round; returns the reference copy devices will hold."""
        if self.codec == "float32":
            self.reference[:] = params
            return self.reference
        if self.codec == "int8":
            self.message = codec.encode(params, rounding="nearest", residual=self._residual)
            _core.dequantize_q8(self.message.blocks, self.n_params, self.reference)
        else:
            self.message = codec.encode_lowbit(params, self.codec, residual=self._residual)
            _core.dequantize_lowbit(self.message.format.fmt, self.message.blocks, self.n_params, self.message.seed,
                                    self.reference)
        return self.reference

    def to_bytes(self) -> bytes:
        return self.reference.tobytes() if self.message is None else self.message.to_bytes()

    @property
    def nbytes(self) -> int:
        """The aggregator's memory for the download: the reference copy and the error-feedback residual."""
        return int(self.reference.nbytes) + (0 if self._residual is None else int(self._residual.nbytes))


def receive(data: bytes | bytearray | memoryview, n_params: int, down_codec: str) -> np.ndarray:
    """A device's side: the model it starts from, from the message's bytes (the reader rule of its format)."""
    mv = memoryview(data).cast("B")
    if down_codec == "float32":
        if len(mv) != 4 * n_params:
            raise ValueError(f"float32 model download of {len(mv)} bytes, {n_params} parameters need {4 * n_params}")
        return np.frombuffer(mv, dtype="<f4").astype(np.float32)
    update = codec.read_update(mv)
    name = "int8" if isinstance(update, codec.Int8Update) else update.format.name
    if name != down_codec:
        raise ValueError(f"model download is {name}, this device expects {down_codec}")
    if len(update) != n_params:
        raise ValueError(f"model download holds {len(update)} parameters, this device's model has {n_params}")
    return update.decode()
