"""The update-norm kernel (ft_sumsq_q8, the first step of clipping) on every SIMD path, beside
the best numpy float64 version and beside one accumulate pass of the same update, in one run.
GB/s counts the wire bytes read (1.03 bytes/param).

    pytest bench/bench_bounds.py --benchmark-only --benchmark-group-by=group
"""
import numpy as np
import pytest

import fedtiny
from fedtiny import _core, codec

SIZES = [199_210, 2_000_000]          # the 2nn, and a 2M-parameter model


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def update(request):
    n = request.param
    x = (np.random.default_rng(0).standard_normal(n) * 0.01).astype(np.float32)
    return codec.encode(x)


def _info(benchmark, u, kind, impl):
    benchmark.group = f"{kind} n={len(u)}"
    benchmark.extra_info.update({"kind": kind, "impl": impl, "n": len(u), "simd": fedtiny.simd_info(),
                                 "wire_bytes": u.nbytes})


@pytest.mark.parametrize("path", fedtiny.simd_available())
def test_norm_fedtiny(benchmark, update, path):
    fedtiny.set_simd(path)
    _info(benchmark, update, "norm", f"fedtiny {path}")
    try:
        benchmark(_core.sumsq_q8, update.blocks, len(update))
    finally:
        fedtiny.set_simd(fedtiny.simd_available()[-1])


def test_norm_numpy_float64(benchmark, update):
    """Best numpy: per-block integer sums of q^2 (exact), then float64 d^2 dot them."""
    _info(benchmark, update, "norm", "numpy")
    q = update.values
    nb = codec.nblocks(len(update))
    qp = np.zeros(nb * codec.QK, np.int32)
    d = update.scales.astype(np.float64)

    def run():
        qp[: q.size] = q
        np.multiply(qp, qp, out=qp)
        s = qp.reshape(nb, codec.QK).sum(axis=1, dtype=np.int64)
        return float(np.dot(d * d, s))
    benchmark(run)


def test_accumulate_same_update(benchmark, update):
    """For scale: the pass that adds the update to the sum (the norm adds one more read)."""
    _info(benchmark, update, "norm", "accumulate (reference)")
    acc = np.zeros(len(update), np.float32)
    benchmark(_core.fedavg_acc_q8, acc, 0, update.blocks, len(update), 1.0)
