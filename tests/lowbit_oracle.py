"""numpy restatement of the sub-byte codecs' spec (docs/PROTOCOL.md "Sub-byte updates"), the oracle
the C kernels are checked against. Written from the spec, in float32 numpy arithmetic where the
spec says float32 and float64 where it says float64, never tuned."""
import numpy as np

from q8_oracle import M32, lowbias32, rng_key, rng_u01

QK, RK = 128, 512
GRID = {"int4": (4, 7, 8), "int2": (2, 1, 1)}  # bits, qmax, code of zero


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(-1, per)
    out = np.zeros(c.shape[0], np.uint8)
    for k in range(per):
        out |= (c[:, k] << np.uint8(k * bits)).astype(np.uint8)
    return out


def quantize_grid(x, fmt, rounding="nearest", seed=0, residual=None):
    """Block bytes (scale + packed codes per block) and the new residual, for int4 / int2."""
    bits, qmax, zero = GRID[fmt]
    n = x.size
    nb = (n + QK - 1) // QK
    v = (x + (residual if residual is not None else np.float32(0))).astype(np.float32)
    vp = np.zeros(nb * QK, np.float32)
    vp[:n] = v
    blocks = vp.reshape(nb, QK)
    amax = np.abs(blocks).max(axis=1)
    small = amax < np.float32(1e-30)
    d = np.where(small, np.float32(0), amax / np.float32(qmax)).astype(np.float32)
    idv = (np.float32(1) / np.where(small, np.float32(1), d)).astype(np.float32)
    idv[small] = 0
    t = (blocks * idv[:, None]).astype(np.float32).reshape(-1)
    if rounding == "stochastic":
        u = np.zeros(nb * QK, np.float32)
        u[:n] = rng_u01(n, seed)
        t = np.floor((t + u).astype(np.float32))
    else:
        t = np.rint(t)
    t = np.clip(t, -qmax, qmax).astype(np.float32)
    t[n:] = 0
    codes = (t.astype(np.int32) + zero).reshape(nb, QK)
    out = b"".join(d[b:b + 1].astype("<f4").tobytes() + pack(codes[b], bits).tobytes() for b in range(nb))
    new_res = None
    if residual is not None:
        new_res = (v - (t[:n] * np.repeat(d, QK)[:n]).astype(np.float32)).astype(np.float32)
    return out, new_res


def fwht(v: np.ndarray) -> np.ndarray:
    """The spec's transform: stages h = 1, 2, 4, ..., each pair (j, j + h) -> (a + b, a - b), in v's dtype."""
    v = v.copy()
    h = 1
    while h < v.size:
        w = v.reshape(-1, 2, h)
        a, b = w[:, 0, :].copy(), w[:, 1, :].copy()
        w[:, 0, :] = a + b
        w[:, 1, :] = a - b
        h *= 2
    return v


def negate(n_total: int, seed: int) -> np.ndarray:
    """D_i = -1 where the top bit of the counter hash of parameter i under the rotation key is set."""
    key = np.uint64(rng_key(seed) ^ 0xA511E9B3)
    i = np.arange(n_total, dtype=np.uint64)
    return (lowbias32((i * np.uint64(0x9E3779B1) + key) & M32) >> np.uint64(31)).astype(bool)


def quantize_r1(x, seed=0, residual=None):
    n = x.size
    nb = (n + RK - 1) // RK
    v = (x + (residual if residual is not None else np.float32(0))).astype(np.float32)
    vp = np.zeros(nb * RK, np.float32)
    vp[:n] = v
    neg = negate(nb * RK, seed)
    u = np.where(neg, -vp, vp).astype(np.float32).reshape(nb, RK)
    out, xhat = [], np.zeros(nb * RK, np.float32)
    for b in range(nb):
        ub = fwht(u[b])
        l1 = np.add.accumulate(np.abs(ub.astype(np.float64)))[-1]  # sequential, as the spec
        l2 = np.add.accumulate(ub.astype(np.float64) ** 2)[-1]
        s = np.float32(l2 / (RK * l1)) if l1 > 0 else np.float32(0)
        sign = ub >= 0
        out.append(np.array([s], "<f4").tobytes() + np.packbits(sign, bitorder="little").tobytes())
        y = fwht(np.where(sign, np.float32(1), np.float32(-1)))
        xb = (s * y).astype(np.float32)
        xhat[b * RK:(b + 1) * RK] = np.where(neg[b * RK:(b + 1) * RK], -xb, xb)
    new_res = (v - xhat[:n]).astype(np.float32) if residual is not None else None
    return b"".join(out), new_res, xhat[:n]
