"""Accumulator.partial_sum / add_sum: a fleet's sum handed to the tier above is FedAvg exactly as
if its updates had been added there one by one (float64 oracle); bad partial sums are refused."""
import numpy as np
import pytest

from fedtiny import codec
from fedtiny.fedavg import Accumulator


def _decode64(u):
    b = u._buf[codec.HEADER_BYTES:].view(codec.BLOCK_DTYPE)
    return (b["d"].astype(np.float64)[:, None] * b["q"].astype(np.float64)).reshape(-1)[:len(u)]


@pytest.mark.parametrize("n", [1, 127, 129, 2410])
def test_two_tier_sum_is_the_float64_fedavg_of_every_update(n):
    rng = np.random.default_rng(n)
    g = rng.normal(0, 1, n).astype(np.float32)
    fleet, top = Accumulator(n), Accumulator(n)
    terms = []
    for k, w in enumerate((3, 50, 11)):       # three devices behind a fleet
        u = codec.encode(rng.normal(0, 0.1, n).astype(np.float32), rounding="stochastic", seed=k)
        fleet.add(u, w)
        terms.append((w * _decode64(u), w))
    s, total = fleet.partial_sum()
    fleet.reset()                              # the copy is the caller's: resetting the fleet keeps it
    assert total == 64 and s.dtype == np.float32 and np.abs(s).max() > 0
    direct = rng.normal(0, 0.1, n).astype(np.float32)   # one device straight at the top tier
    top.add(direct, 7)
    top.add_sum(s, total, 3)
    terms.append((7 * direct.astype(np.float64), 7))
    assert top.count == 4 and top.total_weight == 71
    w = g.copy()
    top.apply(w)
    want = g.astype(np.float64) + sum(t for t, _ in terms) / 71
    mag = sum(np.abs(t) for t, _ in terms) / 71
    eps = np.finfo(np.float32).eps
    assert (np.abs(w - want) <= eps * (6 * mag + 2 * np.abs(want) + 2 * np.abs(g))).all()


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5, np.float64), "1-D float32"), (np.zeros(6, np.float32), "1-D float32"),
    (np.zeros((5, 1), np.float32), "1-D float32"), ([0.0] * 5, "1-D float32"),
    (np.array([0, 0, np.nan, 0, 0], np.float32), "NaN or Inf"), (np.array([0, np.inf, 0, 0, 0], np.float32), "NaN or Inf"),
])
def test_a_bad_partial_sum_is_refused_and_nothing_is_added(bad, match):
    acc = Accumulator(5)
    with pytest.raises(ValueError, match=match):
        acc.add_sum(bad, 10)
    assert acc.count == 0 and acc.total_weight == 0 and not acc.partial_sum()[0].any()


@pytest.mark.parametrize("weight, count", [(0, 1), (-1, 1), (float("nan"), 1), (float("inf"), 1), (5, 0)])
def test_a_partial_sum_needs_a_positive_weight_and_at_least_one_update(weight, count):
    acc = Accumulator(5)
    with pytest.raises(ValueError):
        acc.add_sum(np.ones(5, np.float32), weight, count)
    assert acc.count == 0 and not acc.partial_sum()[0].any()
