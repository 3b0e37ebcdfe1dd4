"""Secure-aggregation kernels (csrc/secagg.c) beside the best numpy version and beside np.copyto of
the same float32 size, in the same run. numpy has no ChaCha20: its versions take the mask and
rounding streams from `cryptography`'s ChaCha20 (OpenSSL, itself SIMD), then do the arithmetic
with preallocated buffers and in-place ufuncs. GB/s counts the float32 size of the model.

    pytest bench/bench_secagg.py --benchmark-only --benchmark-group-by=param:n --benchmark-json=secagg.json
    python bench/report.py secagg.json
"""
import numpy as np
import pytest

cryptography = pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # noqa: E402

import fedtiny  # noqa: E402
from fedtiny import _core  # noqa: E402

SIZES = [200_000, 2_000_000]   # about the 2nn (199,210 parameters), and ten times it
K = 8                          # masks per device: k = 8 neighbours (SecAgg+ graph degree)
STEP, QMAX = 1e-4, 3000


def keystream(key: bytes, nonce: bytes, nbytes: int) -> np.ndarray:
    enc = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(nbytes)), np.uint8)


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def data(request):
    n = request.param
    rng = np.random.default_rng(0)
    return {"n": n, "x": (rng.standard_normal(n) * 0.01).astype(np.float32),
            "seeds": [rng.bytes(32) for _ in range(K)], "signs": np.array([1, -1] * (K // 2), np.int8),
            "rk": rng.bytes(32), "dst": np.empty(n, np.float32),
            "acc": np.zeros(n, np.uint16), "v": rng.integers(0, 2**16, n, dtype=np.uint16)}


def _info(benchmark, data, kind, impl):
    benchmark.group = f"{kind} n={data['n']}"
    benchmark.extra_info.update({"kind": kind, "impl": impl, "n": data["n"], "simd": fedtiny.simd_info(),
                                 "f32_bytes": 4 * data["n"]})


KINDS = ["l2norm", "encode k=0", f"encode k={K}", "unmask k=1", "add", "decode", "chacha20 8 B/param"]


@pytest.mark.parametrize("kind", KINDS)
def test_copyto(benchmark, data, kind):
    _info(benchmark, data, kind, "np.copyto")
    benchmark(np.copyto, data["dst"], data["x"])


# ---- device ------------------------------------------------------------------------------------

def test_l2norm_fedtiny(benchmark, data):
    _info(benchmark, data, "l2norm", "fedtiny")
    benchmark(_core.l2norm_f32, data["x"])


def test_l2norm_numpy(benchmark, data):
    _info(benchmark, data, "l2norm", "numpy")
    x64 = np.empty(data["n"], np.float64)

    def run():
        np.copyto(x64, data["x"])
        return np.sqrt(np.dot(x64, x64))

    assert benchmark(run) == pytest.approx(_core.l2norm_f32(data["x"]), rel=1e-12)


def _encode_numpy(data, k):
    n, x = data["n"], data["x"]
    m = np.float32(1.0) / np.float32(STEP)
    t = np.empty(n, np.float32)
    fl = np.empty(n, np.float32)
    u = np.empty(n, np.float32)
    acc = np.empty(n, np.uint16)

    def run():
        np.multiply(x, m, out=t)
        np.clip(t, -QMAX, QMAX, out=t)
        np.floor(t, out=fl)
        np.subtract(t, fl, out=t)                                     # frac
        r = keystream(data["rk"], b"fedtiny-srnd", 4 * n).view("<u4")
        np.multiply(r >> 8, np.float32(2.0**-24), out=u, casting="unsafe")
        np.add(fl, u < t, out=fl)
        acc[...] = fl.astype(np.int32)                                # mod 2^16 by the cast
        for s, g in zip(data["seeds"][:k], data["signs"][:k]):
            mask = keystream(s, b"fedtiny-mask", 2 * n).view("<u2")
            (np.add if g > 0 else np.subtract)(acc, mask, out=acc)
        return acc

    return run


@pytest.mark.parametrize("k", [0, K], ids=lambda k: f"k{k}")
def test_encode_fedtiny(benchmark, data, k):
    _info(benchmark, data, f"encode k={k}", "fedtiny")
    out = np.empty(data["n"], np.uint16)
    benchmark(_core.secagg_encode, data["x"], 0, 1.0, STEP, QMAX, data["rk"], b"".join(data["seeds"][:k]),
              data["signs"][:k], out)
    np.testing.assert_array_equal(out, _encode_numpy(data, k)())   # the same bytes as the numpy version


@pytest.mark.parametrize("k", [0, K], ids=lambda k: f"k{k}")
def test_encode_numpy(benchmark, data, k):
    _info(benchmark, data, f"encode k={k}", "numpy")
    benchmark(_encode_numpy(data, k))


# ---- aggregator ----------------------------------------------------------------------------------

def test_unmask_fedtiny(benchmark, data):
    _info(benchmark, data, "unmask k=1", "fedtiny")
    benchmark(_core.secagg_mask, data["v"], 0, data["seeds"][0], [-1])


def test_unmask_numpy(benchmark, data):
    _info(benchmark, data, "unmask k=1", "numpy")
    v = data["v"].copy()
    benchmark(lambda: np.subtract(v, keystream(data["seeds"][0], b"fedtiny-mask", 2 * data["n"]).view("<u2"), out=v))


def test_add_fedtiny(benchmark, data):
    _info(benchmark, data, "add", "fedtiny")
    benchmark(_core.secagg_add, data["acc"], data["v"])


def test_add_numpy(benchmark, data):
    _info(benchmark, data, "add", "numpy")
    acc = data["acc"].copy()
    benchmark(np.add, acc, data["v"], out=acc)


def test_decode_fedtiny(benchmark, data):
    _info(benchmark, data, "decode", "fedtiny")
    benchmark(_core.secagg_decode, data["v"], STEP / 10, data["dst"])


def test_decode_numpy(benchmark, data):
    _info(benchmark, data, "decode", "numpy")
    out = np.empty(data["n"], np.float32)
    benchmark(lambda: np.multiply(data["v"].view(np.int16), STEP / 10, out=out, casting="same_kind"))


def test_chacha20_fedtiny(benchmark, data):
    _info(benchmark, data, "chacha20 8 B/param", "fedtiny")
    out = np.empty(8 * data["n"], np.uint8)
    benchmark(_core.chacha20_stream, data["seeds"][0], b"fedtiny-mask", 0, out)


def test_chacha20_numpy(benchmark, data):
    """`cryptography` (OpenSSL) ChaCha20 of the same bytes."""
    _info(benchmark, data, "chacha20 8 B/param", "numpy")
    benchmark(keystream, data["seeds"][0], b"fedtiny-mask", 8 * data["n"])
