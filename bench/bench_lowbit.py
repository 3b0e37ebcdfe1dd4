"""The sub-byte codec kernels (rotation + 1-bit packing, 4-bit and 2-bit packing, their in-place
FedAvg adds) beside the best numpy version and np.copyto of the same float32 size, in the same
run, on the scalar reference and on the best SIMD path. GB/s counts the model's float32 size.

    pytest bench/bench_lowbit.py --benchmark-only --benchmark-group-by=group
    pytest bench/bench_lowbit.py --benchmark-only --benchmark-json=OUT.json
    python bench/bench_lowbit.py OUT.json      # the table with ratios
"""
import numpy as np
import pytest

import fedtiny
from fedtiny import _core, codec

SIZES = [199_210, 2_000_000]  # the 2nn, and a 2M-parameter model
RK = _core.RK
PATHS = fedtiny.simd_available()   # the scalar reference and every SIMD path of this CPU
FMT = {"int4": 4, "int2": 2, "1bit-rot": 1}


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def data(request):
    n = request.param
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 0.01).astype(np.float32)
    return {"n": n, "x": x, "dst": np.empty(n, np.float32), "acc": np.zeros(n, np.float32),
            "u": {f: codec.encode_lowbit(x, f, seed=1) for f in FMT}}


@pytest.fixture(params=PATHS)
def path(request):
    before = fedtiny.simd_info()
    fedtiny.set_simd(request.param)
    yield request.param
    fedtiny.set_simd(before)


def _info(benchmark, data, kind, impl):
    benchmark.group = f"{kind} n={data['n']}"
    benchmark.extra_info.update({"kind": kind, "impl": impl, "n": data["n"], "simd": fedtiny.simd_info(),
                                 "f32_bytes": 4 * data["n"]})


@pytest.mark.parametrize("kind", ["encode 1bit-rot", "encode int4", "encode int2", "accumulate 1bit-rot",
                                  "accumulate int4"])
def test_copyto(benchmark, data, kind):
    _info(benchmark, data, kind, "np.copyto")
    benchmark(np.copyto, data["dst"], data["x"])


@pytest.mark.parametrize("fmt", list(FMT))
def test_encode_fedtiny(benchmark, data, path, fmt):
    _info(benchmark, data, f"encode {fmt}", f"fedtiny {path}")
    f = codec.LOWBIT_FORMATS[fmt]
    out = np.empty(f.nblocks(data["n"]) * f.block_bytes, np.uint8)
    benchmark(_core.quantize_lowbit, f.fmt, data["x"], None, 0, 1, out)


def _numpy_fwht(u):
    """Rows of u (nb x RK) transformed in place, stage by stage: the best numpy form (views, no copies
    but one temporary per stage)."""
    h = 1
    while h < u.shape[1]:
        w = u.reshape(u.shape[0], -1, 2, h)
        a = w[:, :, 0, :].copy()
        w[:, :, 0, :] += w[:, :, 1, :]
        np.subtract(a, w[:, :, 1, :], out=w[:, :, 1, :])
        h *= 2
    return u


def test_encode_numpy_1bit_rot(benchmark, data):
    _info(benchmark, data, "encode 1bit-rot", "numpy")
    n = data["n"]
    nb = -(-n // RK)
    signs = np.where(np.random.default_rng(1).random(nb * RK) < 0.5, np.float32(-1), np.float32(1)).reshape(nb, RK)
    u = np.zeros((nb, RK), np.float32)

    def run():
        u.reshape(-1)[:n] = data["x"]
        u.reshape(-1)[n:] = 0  # the padding (the transform of the last run left values there)
        np.multiply(u, signs, out=u)
        _numpy_fwht(u)
        l1 = np.abs(u).sum(axis=1, dtype=np.float64)
        l2 = np.einsum("ij,ij->i", u, u, dtype=np.float64)
        s = (l2 / (RK * l1)).astype(np.float32)
        return s, np.packbits(u >= 0, axis=1, bitorder="little")

    benchmark(run)


@pytest.mark.parametrize("fmt,bits,qmax", [("int4", 4, 7), ("int2", 2, 1)])
def test_encode_numpy_grid(benchmark, data, fmt, bits, qmax):
    _info(benchmark, data, f"encode {fmt}", "numpy")
    n = data["n"]
    nb = -(-n // codec.QK)
    xp = np.zeros((nb, codec.QK), np.float32)
    xp.reshape(-1)[:n] = data["x"]
    tmp = np.empty_like(xp)
    per = 8 // bits

    def run():
        d = np.abs(xp).max(axis=1) / np.float32(qmax)
        idv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
        np.multiply(xp, idv[:, None], out=tmp)
        np.rint(tmp, out=tmp)
        codes = (tmp.astype(np.int8) + (8 if bits == 4 else 1)).astype(np.uint8).reshape(nb, -1, per)
        packed = codes[:, :, 0].copy()
        for k in range(1, per):
            packed |= codes[:, :, k] << np.uint8(k * bits)
        return d, packed

    d, packed = benchmark(run)
    want = data["u"][fmt].blocks  # the same codec, the same answer
    f = codec.LOWBIT_FORMATS[fmt]
    blocks = np.frombuffer(want, np.uint8).reshape(nb, f.block_bytes)
    np.testing.assert_array_equal(blocks[:, 4:], packed)


@pytest.mark.parametrize("fmt", ["1bit-rot", "int4"])
def test_accumulate_fedtiny(benchmark, data, path, fmt):
    _info(benchmark, data, f"accumulate {fmt}", f"fedtiny {path}")
    u = data["u"][fmt]
    benchmark(_core.fedavg_acc_lowbit, u.format.fmt, data["acc"], 0, u.blocks, data["n"], u.seed, 0.5)


@pytest.mark.parametrize("fmt", ["1bit-rot", "int4"])
def test_accumulate_numpy_via_decode(benchmark, data, fmt):
    """What the in-place kernel avoids: decode to a float32 copy, then add it."""
    _info(benchmark, data, f"accumulate {fmt}", "decode + numpy add")
    u = data["u"][fmt]
    tmp = np.empty(data["n"], np.float32)

    def run():
        _core.dequantize_lowbit(u.format.fmt, u.blocks, data["n"], u.seed, tmp)
        np.multiply(tmp, np.float32(0.5), out=tmp)
        np.add(data["acc"], tmp, out=data["acc"])

    benchmark(run)


def report(path: str) -> None:
    """The table of docs/simulation.md from a --benchmark-json file: medians, GB/s of the float32
    model, and the ratios to numpy and to np.copyto measured in the same run."""
    import json

    with open(path) as f:
        benches = json.load(f)["benchmarks"]
    rows: dict = {}
    for b in benches:
        info = b["extra_info"]
        rows.setdefault((info["kind"], info["n"]), {})[info["impl"]] = b["stats"]["median"]
    print("| kernel | params | fedtiny scalar | fedtiny SIMD (path) | numpy | SIMD vs numpy | np.copyto | SIMD / copy time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (kind, n), impls in sorted(rows.items()):
        simd = sorted((k for k in impls if k.startswith("fedtiny ") and k != "fedtiny scalar"), key=impls.get)
        best = impls[simd[0]] if simd else impls.get("fedtiny scalar", float("nan"))   # the fastest path
        numpy_t = next((t for k, t in impls.items() if k.startswith("numpy") or k.startswith("decode")), float("nan"))
        copy_t = impls.get("np.copyto", float("nan"))
        gbs = 4 * n / best / 1e9
        print(f"| {kind} | {n:,} | {impls.get('fedtiny scalar', float('nan')) * 1e6:,.0f} µs | {best * 1e6:,.0f} µs "
              f"({simd[0].split()[1] if simd else 'scalar'}, {gbs:.1f} GB/s) | {numpy_t * 1e6:,.0f} µs | "
              f"{numpy_t / best:.1f}x | {copy_t * 1e6:,.0f} µs | {best / copy_t:.1f}x |")


if __name__ == "__main__":
    import sys

    report(sys.argv[1])
