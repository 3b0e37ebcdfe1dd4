"""numpy restatement of the int8 block codec spec (docs/PROTOCOL.md), the oracle the C kernels
are checked against. Written from the spec, in float32 numpy arithmetic, never tuned."""
import numpy as np

QK = 128
M32 = np.uint64(0xFFFFFFFF)


def lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & M32
    x ^= x >> np.uint64(16)
    return x


def rng_key(seed: int) -> int:
    lo, hi = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    return int(lowbias32(np.array([lo]))[0] ^ lowbias32(np.array([hi ^ 0x9E3779B9]))[0])


def rng_u01(n: int, seed: int) -> np.ndarray:
    i = np.arange(n, dtype=np.uint64)
    h = lowbias32((i * np.uint64(0x9E3779B1) + np.uint64(rng_key(seed))) & M32)
    return (h >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)


def quantize(x: np.ndarray, rounding: str = "nearest", seed: int = 0, residual=None):
    """Returns (scales float32 [nb], q int8 [nb*QK], new_residual or None)."""
    n = x.size
    nb = (n + QK - 1) // QK
    v = x.astype(np.float32) + (residual if residual is not None else np.float32(0))
    v = v.astype(np.float32)
    vp = np.zeros(nb * QK, np.float32)
    vp[:n] = v
    blocks = vp.reshape(nb, QK)
    amax = np.abs(blocks).max(axis=1)
    small = amax < np.float32(1e-30)
    d = np.where(small, np.float32(0), amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(small, np.float32(0), np.float32(1) / np.where(small, np.float32(1), d)).astype(np.float32)
    t = (blocks * idv[:, None]).astype(np.float32).reshape(-1)
    if rounding == "stochastic":
        u = np.zeros(nb * QK, np.float32)
        u[:n] = rng_u01(n, seed)
        t = np.floor((t + u).astype(np.float32))
    else:
        t = np.rint(t)
    t = np.clip(t, -127, 127)
    t[n:] = 0
    q = t.astype(np.int8)
    new_res = None
    if residual is not None:
        new_res = (v - (q[:n].astype(np.float32) * np.repeat(d, QK)[:n]).astype(np.float32)).astype(np.float32)
    return d, q, new_res
