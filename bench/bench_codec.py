"""Codec and FedAvg kernels beside the best numpy version and beside np.copyto of the same
float32 size, in the same run. GB/s counts the float32 size of the model (4 bytes/param).

    pytest bench/bench_codec.py --benchmark-only --benchmark-group-by=param:n
    python bench/report.py .benchmarks/.../NNNN_*.json      # the README table with ratios
"""
import numpy as np
import pytest

import fedtiny
from fedtiny import _core, codec

SIZES = [10_000, 200_000, 2_000_000, 20_000_000]
QK = codec.QK


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def data(request):
    n = request.param
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 0.01).astype(np.float32)
    u = codec.encode(x)
    nb = codec.nblocks(n)
    xp = np.zeros(nb * QK, np.float32)
    xp[:n] = x
    return {"n": n, "x": x, "xp": xp.reshape(nb, QK), "u": u, "acc": np.zeros(n, np.float32),
            "out": np.empty(n, np.float32), "dst": np.empty(n, np.float32),
            "q": u.values.copy(), "d": u.scales.copy(), "qbuf": np.empty(n, np.int8)}


def _info(benchmark, data, kind, impl):
    benchmark.group = f"{kind} n={data['n']}"
    benchmark.extra_info.update({"kind": kind, "impl": impl, "n": data["n"], "simd": fedtiny.simd_info(),
                                 "f32_bytes": 4 * data["n"]})


# ---- the reference point: copying the same float32 size -------------------------------------

@pytest.mark.parametrize("kind", ["quantize", "dequantize", "accumulate"])
def test_copyto(benchmark, data, kind):
    _info(benchmark, data, kind, "np.copyto")
    benchmark(np.copyto, data["dst"], data["x"])


# ---- quantize -------------------------------------------------------------------------------

def test_quantize_fedtiny(benchmark, data):
    _info(benchmark, data, "quantize", "fedtiny")
    out = np.empty(codec.nblocks(data["n"]) * codec.BLOCK_BYTES, np.uint8)
    benchmark(_core.quantize_q8, data["x"], None, 0, 0, out)


def test_quantize_numpy(benchmark, data):
    """Best numpy: preallocated buffers, in-place ufuncs, one cast at the end."""
    _info(benchmark, data, "quantize", "numpy")
    xp = data["xp"]
    tmp = np.empty_like(xp)
    q2 = np.empty(xp.shape, np.int8)

    def run():
        amax = np.abs(xp).max(axis=1)
        d = amax / np.float32(127)
        idv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
        np.multiply(xp, idv[:, None], out=tmp)
        np.rint(tmp, out=tmp)
        q2[...] = tmp
        return d

    d = benchmark(run)
    np.testing.assert_array_equal(d, data["u"].scales)  # the same codec, the same answer
    np.testing.assert_array_equal(q2.reshape(-1)[: data["n"]], data["u"].values)


# ---- dequantize -----------------------------------------------------------------------------

def test_dequantize_fedtiny(benchmark, data):
    _info(benchmark, data, "dequantize", "fedtiny")
    benchmark(_core.dequantize_q8, data["u"].blocks, data["n"], data["out"])


def test_dequantize_numpy(benchmark, data):
    _info(benchmark, data, "dequantize", "numpy")
    nb = codec.nblocks(data["n"])
    q2 = np.zeros((nb, QK), np.int8)
    q2.reshape(-1)[: data["n"]] = data["q"]
    out = np.empty((nb, QK), np.float32)
    d = data["d"][:, None]
    benchmark(np.multiply, q2, d, out=out)
    np.testing.assert_array_equal(out.reshape(-1)[: data["n"]], data["u"].decode())


# ---- accumulate (acc += w * d * q) ----------------------------------------------------------

def test_accumulate_fedtiny(benchmark, data):
    _info(benchmark, data, "accumulate", "fedtiny")
    benchmark(_core.fedavg_acc_q8, data["acc"], 0, data["u"].blocks, data["n"], 3.0)


def test_accumulate_numpy(benchmark, data):
    _info(benchmark, data, "accumulate", "numpy")
    nb = codec.nblocks(data["n"])
    q2 = np.zeros((nb, QK), np.int8)
    q2.reshape(-1)[: data["n"]] = data["q"]
    acc = np.zeros((nb, QK), np.float32)
    tmp = np.empty((nb, QK), np.float32)
    s = (np.float32(3.0) * data["d"])[:, None]

    def run():
        np.multiply(q2, s, out=tmp)
        np.add(acc, tmp, out=acc)

    benchmark(run)
    acc.fill(0.0)   # the same answer as fedtiny's kernel, bit for bit, from one pass over zeros
    run()
    want = np.zeros(data["n"], np.float32)
    _core.fedavg_acc_q8(want, 0, data["u"].blocks, data["n"], 3.0)
    np.testing.assert_array_equal(acc.reshape(-1)[: data["n"]], want)
