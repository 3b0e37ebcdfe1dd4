"""numpy/`cryptography` oracles of the secure-aggregation kernels (docs/secagg.md "Streams" and
"Grid"): the mask and rounding streams from OpenSSL's ChaCha20, the grid mapping in numpy float32
exactly as specified, the sums in int64. Test oracles only; the product uses the C kernels."""
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MASK_NONCE = b"fedtiny-mask"
ROUND_NONCE = b"fedtiny-srnd"


def keystream(key: bytes, nonce: bytes, start: int, nbytes: int) -> bytes:
    """Keystream bytes [start, start + nbytes) of ChaCha20(key, nonce) with the counter from 0."""
    blk0, skip = divmod(start, 64)
    enc = Cipher(algorithms.ChaCha20(key, blk0.to_bytes(4, "little") + nonce), mode=None).encryptor()
    return enc.update(bytes(skip + nbytes))[skip:]


def stream_words(key: bytes, nonce: bytes, offset: int, n: int, bits: int) -> np.ndarray:
    w = bits // 8
    return np.frombuffer(keystream(key, nonce, w * offset, w * n), dtype=f"<u{w}").astype(np.int64)


def grid(x: np.ndarray, offset: int, scale: float, step: float, qmax: int, round_key: bytes) -> np.ndarray:
    """The integers q of the grid mapping (int64), float32 arithmetic as specified."""
    m = np.float32(scale) / np.float32(step)
    t = np.clip(x.astype(np.float32) * m, np.float32(-qmax), np.float32(qmax)).astype(np.float32)
    fl = np.floor(t)
    frac = (t - fl).astype(np.float32)
    r = stream_words(round_key, ROUND_NONCE, offset, len(x), 32)
    u = (r >> 8).astype(np.float32) * np.float32(2.0**-24)
    return fl.astype(np.int64) + (u < frac)


def encode(x, offset, scale, step, qmax, round_key, seeds, signs, bits) -> np.ndarray:
    q = grid(x, offset, scale, step, qmax, round_key)
    for s, g in zip(seeds, signs):
        q = q + g * stream_words(s, MASK_NONCE, offset, len(x), bits)
    return np.mod(q, 2**bits).astype(np.uint16 if bits == 16 else np.uint32)


def centered(v: np.ndarray, bits: int) -> np.ndarray:
    c = v.astype(np.int64)
    return np.where(c >= 2 ** (bits - 1), c - 2**bits, c)


def clipped_grid(delta: np.ndarray, clip: float, step: float, qmax: int, round_key: bytes) -> np.ndarray:
    """A device's grid vector: its delta scaled to L2 norm <= clip (float64 norm), then `grid`."""
    norm = float(np.sqrt(np.sum(delta.astype(np.float64) ** 2)))
    return grid(delta, 0, 1.0 if norm <= clip else clip / norm, step, qmax, round_key)

