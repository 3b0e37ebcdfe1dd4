"""Clipping bounds every update; the noise stages add what they state; DP runs through simulate."""
import dataclasses
import math

import numpy as np
import pytest

from fedtiny.fedavg import Accumulator
from fedtiny.privacy import clipping, ddgauss
from fedtiny.privacy.central import GaussianSumNoise

dpa = pytest.importorskip("dp_accounting")
stats = pytest.importorskip("scipy.stats")


# --- clipping ---------------------------------------------------------------------------------

def hostile_vectors():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 127, 1000, 199210):
        yield rng.normal(size=n).astype(np.float32)
    yield np.full(5000, 3.0e38, np.float32) / np.float32(1e20)     # large, finite norm
    yield np.full(1000, 1e-30, np.float32)                           # tiny
    v = np.zeros(4096, np.float32); v[7] = -1e30; yield v            # one huge coordinate
    yield (rng.normal(size=4097) * 10.0 ** rng.uniform(-20, 20, 4097)).astype(np.float32)  # every scale


@pytest.mark.parametrize("bound", [1e-6, 0.1, 1.0, 3.7, 1e6])
def test_clipping_never_lets_a_norm_above_the_bound_through(bound):
    for v in hostile_vectors():
        norm64 = np.linalg.norm(v.astype(np.float64))
        out, norm = clipping.clip(v, bound)
        assert norm == pytest.approx(norm64, rel=1e-12)
        assert np.linalg.norm(out.astype(np.float64)) <= bound
        if norm64 <= bound:
            assert np.array_equal(out, v)  # nothing to clip: untouched
        elif norm64 > 0:
            cos = np.dot(out.astype(np.float64), v.astype(np.float64)) / (np.linalg.norm(out.astype(np.float64)) * norm64)
            assert cos > 1 - 1e-6  # same direction
            assert np.linalg.norm(out.astype(np.float64)) > bound * (1 - 1e-5)  # and not needlessly short


def test_clipping_refuses_non_finite_and_bad_bounds():
    with pytest.raises(ValueError, match="NaN or Inf"):
        clipping.clip(np.array([1.0, np.nan], np.float32), 1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        clipping.clip(np.array([1.0, np.inf], np.float32), 1.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="--clip-norm"):
            clipping.clip(np.ones(3, np.float32), bad)


def test_adaptive_clip_tracks_the_quantile():
    # Andrew et al. 2021: the geometric update converges to the gamma-quantile of the norms
    rng = np.random.default_rng(1)
    for quantile in (0.3, 0.5, 0.8):
        clip = clipping.AdaptiveClip(0.01, quantile, count_std=100 / 20)
        for _ in range(400):
            norms = rng.lognormal(0.0, 0.5, 100)
            clip.step(int((norms <= clip.bound).sum()), 100, rng)
        truth = float(np.exp(0.5 * stats.norm.ppf(quantile)))
        assert clip.bound == pytest.approx(truth, rel=0.1)


def test_adaptive_clip_noise_split_keeps_the_total_noise_multiplier():
    # releasing the update sum (z_delta) and the count (sensitivity 1/2, std sigma_b) composes to
    # one Gaussian of multiplier z: the same epsilon as dp-accounting's Gaussian(z)
    from dp_accounting import rdp
    z, sigma_b = 1.1, 5.0
    zd = clipping.update_noise_multiplier(z, sigma_b)
    assert zd > z
    a, b = rdp.RdpAccountant(), rdp.RdpAccountant()
    a.compose(dpa.ComposedDpEvent([dpa.GaussianDpEvent(zd), dpa.GaussianDpEvent(2 * sigma_b)]), 10)
    b.compose(dpa.GaussianDpEvent(z), 10)
    assert a.get_epsilon(1e-5) == pytest.approx(b.get_epsilon(1e-5), rel=1e-9)
    with pytest.raises(ValueError, match="count"):
        clipping.update_noise_multiplier(4.0, 1.0)


# --- central noise ----------------------------------------------------------------------------

def test_central_noise_is_gaussian_with_std_z_times_c_and_the_mean_divides_by_m():
    n, z, c, m = 200_000, 1.3, 0.7, 40.0
    stage = GaussianSumNoise(z, m, np.random.default_rng(5))
    stage.bound = c
    acc = Accumulator(n)
    acc.add(np.zeros(n, np.float32), 1.0)
    w = np.zeros(n, np.float32)
    acc.apply(w, stage(acc, None))
    noise = w.astype(np.float64) * m  # the sum's noise
    assert stats.kstest(noise / (z * c), "norm").pvalue > 1e-3
    assert noise.std() == pytest.approx(z * c, rel=0.01)
    assert stats.kstest(noise / (1.1 * z * c), "norm").pvalue < 1e-6  # the test can fail


# --- distributed discrete Gaussian ------------------------------------------------------------

def test_rotation_is_orthogonal_and_invertible():
    p = ddgauss.choose(1000, 1.0, 1.0, 10)
    x = np.random.default_rng(2).normal(size=1000)
    y = ddgauss.rotate(p, x, 9)
    assert y.size == 1024
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    assert np.allclose(ddgauss.unrotate(p, y, 9), x, atol=1e-12)
    assert not np.allclose(ddgauss.unrotate(p, y, 10), x, atol=1e-3)


def test_conditional_rounding_is_bounded_and_unbiased():
    p = ddgauss.choose(4000, 1.0, 1.0, 20, bits=16)
    rng = np.random.default_rng(3)
    x = rng.normal(size=p.padded)
    x *= (p.clip / p.gamma) / np.linalg.norm(x)  # a clipped update on the grid
    total = np.zeros(p.padded)
    for _ in range(200):
        r = ddgauss.round_conditional(p, x, rng)
        assert float(np.dot(r, r)) <= p.delta2 ** 2
        assert np.all(np.abs(r - x) < 1)
        total += r
    assert np.abs(total / 200 - x).max() < 0.15


def test_distributed_sum_carries_the_stated_noise():
    n_dev, d = 20, 3000
    p = ddgauss.choose(d, 1.0, 1.0, n_dev)
    assert p.z_effective >= 1.0 and p.z_effective < 1.0 + 1e-5
    rng = np.random.default_rng(4)
    src = np.random.default_rng(44)
    total = ddgauss.new_sum(p)
    true = np.zeros(d)
    for _ in range(n_dev):
        u = rng.normal(size=d).astype(np.float32)
        u, _ = clipping.clip(u, 1.0)
        true += u
        ddgauss.add_mod(p, total, ddgauss.encode(p, u, 77, rng, lambda k: src.bytes(k)))
    err = ddgauss.decode(p, total, 77).astype(np.float64) - true
    # noise n sigma^2 grid units plus rounding error (at most n/4), times gamma
    lo = p.gamma * math.sqrt(n_dev * p.sigma2)
    assert lo * 0.97 < err.std() < p.sum_noise_std() * 1.03
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(d)


@pytest.mark.parametrize("bits", [2, 5, 12, 17, 31])
def test_modular_sum_wraps_and_decodes(bits):
    # the aggregator's stage is secure aggregation's C kernels at any b (the numpy copy is gone):
    # the int64 sum modulo 2^b, read centered, against numpy
    p = dataclasses.replace(ddgauss.choose(64, 1.0, 1.0, 4, bits=12), bits=bits)
    rng = np.random.default_rng(bits)
    vals = rng.integers(-(2 ** (bits + 1)), 2 ** (bits + 1), (5, p.padded))
    total = ddgauss.new_sum(p)
    for v in vals:
        ddgauss.add_mod(p, total, (v & (2 ** bits - 1)).astype(np.uint32))
    assert int(total.max()) < 2 ** bits
    want = np.mod(vals.sum(axis=0), 2 ** bits)
    np.testing.assert_array_equal(total.astype(np.int64), want)
    want[want >= 2 ** (bits - 1)] -= 2 ** bits                      # centered
    got = ddgauss.decode(dataclasses.replace(p, gamma=1.0), total, 9)
    np.testing.assert_allclose(got, ddgauss.unrotate(dataclasses.replace(p, gamma=1.0), want.astype(np.float64), 9),
                               rtol=1e-6, atol=1e-6 * 2 ** bits)


def test_bits_follow_devices_and_noise():
    a = ddgauss.choose(199210, 1.0, 1.0, 100)
    b = ddgauss.choose(199210, 1.0, 1.0, 1000)
    assert b.bits >= a.bits
    assert a.sum_noise_std() <= 1.05 * 1.0
    with pytest.raises(ValueError, match="--dp-bits"):
        ddgauss.choose(199210, 1.0, 1.0, 100, bits=3)


def test_distributed_round_outside_the_sized_cohort_is_not_released():
    from fedtiny.privacy.pipeline import PrivateRounds, cohort_range
    lo, hi = cohort_range("poisson", 1000, 100)
    assert (lo, hi) == (71, 129)
    pr = PrivateRounds("distributed", clients=40, fraction=0.25, rounds_planned=5, dim=300, clip_norm=1.0,
                       noise_multiplier=1.0, sampling="fixed", test_seed=1)
    pr.begin_round()
    for _ in range(pr.params.devices - 1):
        pr.device(np.full(300, 0.01, np.float32), 5)
    assert pr.distributed_sum(5) is None  # one device short: the noise would be too small
    row = pr.end_round(released=False)
    assert row["epsilon"] == 0.0
    pr.begin_round()
    for _ in range(pr.params.devices):
        pr.device(np.full(300, 0.01, np.float32), 6)
    assert pr.distributed_sum(6) is not None
    assert pr.end_round(released=True)["epsilon"] > 0


def test_accumulator_perturb_and_fixed_denominator():
    acc = Accumulator(4)
    acc.add(np.ones(4, np.float32), 1.0)
    acc.add(np.ones(4, np.float32), 1.0)
    acc.perturb(np.array([1, 2, 3, 4], np.float32))
    w = np.zeros(4, np.float32)
    acc.apply(w, 10.0)
    assert np.allclose(w, (2 + np.array([1, 2, 3, 4])) / 10)
    for bad in (np.ones(3, np.float32), np.array([1, 2, np.nan, 4], np.float32), np.ones(4, np.float64)):
        with pytest.raises(ValueError, match="perturbation"):
            acc.perturb(bad)
