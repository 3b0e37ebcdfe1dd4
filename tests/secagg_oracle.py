"""numpy + `cryptography` oracle of the secure-aggregation kernels (csrc/fedtiny.h "secure
aggregation"): the mask and rounding streams are ChaCha20 keystreams read as little-endian words,
the grid is clip -> scale -> clamp -> unbiased stochastic rounding in float32. Test-only."""
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MASK_NONCE = b"fedtiny-mask"
ROUND_NONCE = b"fedtiny-srnd"


def stream_words(key: bytes, nonce: bytes, n: int, width: int, offset: int = 0) -> np.ndarray:
    """Words offset..offset+n of the ChaCha20 stream (key, nonce, counter 0) as little-endian uints."""
    first = offset * width
    block0, skip = divmod(first, 64)
    enc = Cipher(algorithms.ChaCha20(key, block0.to_bytes(4, "little") + nonce), mode=None).encryptor()
    raw = enc.update(bytes(skip + n * width))[skip:]
    return np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4").astype(np.uint64)


def grid_vector(x: np.ndarray, scale: float, step: float, qmax: int, round_key: bytes) -> np.ndarray:
    """The signed integers q of one device (no masks), float32 arithmetic as the kernel's."""
    m = np.float32(scale) / np.float32(step)
    t = np.clip(x.astype(np.float32) * m, np.float32(-qmax), np.float32(qmax)).astype(np.float32)
    fl = np.floor(t)
    frac = t - fl
    r = stream_words(round_key, ROUND_NONCE, x.size, 4)
    u = (r >> 8).astype(np.float32) * np.float32(2.0 ** -24)
    return fl.astype(np.int64) + (u < frac)


def masked(q: np.ndarray, bits: int, seeds, signs, offset: int = 0) -> np.ndarray:
    acc = q.astype(np.int64) % (1 << bits)
    for seed, sign in zip(seeds, signs):
        acc = (acc + int(sign) * stream_words(seed, MASK_NONCE, q.size, bits // 8, offset).astype(np.int64)) % (1 << bits)
    return acc.astype(np.uint16 if bits == 16 else np.uint32)
