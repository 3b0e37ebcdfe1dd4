"""The noise has the stated distribution: the exact discrete Gaussian (C) against its pmf, the
central Gaussian against N(0, (zC)^2); chi-square and moments with fixed-seed byte sources."""
import math

import numpy as np
import pytest

from fedtiny import _core

stats = pytest.importorskip("scipy.stats")


def seeded_bytes(seed):
    rng = np.random.default_rng(seed)
    return lambda n: rng.bytes(n)


def dgauss(n, num, den, seed):
    out = np.empty(n, dtype=np.int64)
    _core.dgauss_s64(out, num, den, seeded_bytes(seed))
    return out


def exact_pmf(sigma2):
    half = int(40 * math.sqrt(sigma2)) + 40
    x = np.arange(-half, half + 1)
    w = np.exp(-(x.astype(np.float64) ** 2) / (2 * sigma2))
    return x, w / w.sum()


def chi_square_p(samples, sigma2):
    x, p = exact_pmf(sigma2)
    counts = np.bincount(samples - x[0], minlength=x.size)[: x.size]
    assert counts.sum() == samples.size, "a sample fell outside +-40 sigma"
    expected = p * samples.size
    keep = expected >= 5  # the tails are lumped into one bin
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1] * obs[:-1].sum() / exp[:-1].sum()
    return stats.chisquare(obs, exp).pvalue


# (num, den): small sigma (t = 1), fractions, the 64-bit path, and 2^40 / 2^24 = 65536, the
# same sigma^2 as 65536 / 1 but with 2 a b t^2 above 2^64, so every draw takes the 256-bit path.
SIGMAS = [(1, 3), (1, 1), (9, 4), (100, 1), (65536, 1), (1 << 40, 1 << 24)]


@pytest.mark.parametrize("num,den", SIGMAS)
def test_discrete_gaussian_matches_the_exact_pmf(num, den):
    sigma2 = num / den
    s = dgauss(200_000, num, den, seed=num * 7 + den)
    assert chi_square_p(s, sigma2) > 1e-3
    x, p = exact_pmf(sigma2)
    var = float((p * x.astype(np.float64) ** 2).sum())  # the discrete Gaussian's variance (<= sigma^2)
    se = var * math.sqrt(2 / s.size) * 1.2
    assert abs(s.astype(np.float64).var() - var) < 5 * se
    assert abs(s.mean()) < 5 * math.sqrt(var / s.size)


def test_discrete_gaussian_rejects_a_wrong_distribution():
    # the test above can fail: samples of variance 1.1 sigma^2 are caught
    s = dgauss(200_000, 110, 1, seed=3)
    assert chi_square_p(s, 100.0) < 1e-6


def test_same_bytes_same_draws_and_other_bytes_other_draws():
    assert np.array_equal(dgauss(1000, 9, 4, 1), dgauss(1000, 9, 4, 1))
    assert not np.array_equal(dgauss(1000, 9, 4, 1), dgauss(1000, 9, 4, 2))


@pytest.mark.parametrize("num,den", [(0, 1), (1, 0), ((1 << 40) + 1, 1), (1, (1 << 24) + 1)])
def test_out_of_range_variance_is_refused(num, den):
    with pytest.raises(ValueError, match="sigma"):
        _core.dgauss_s64(np.empty(4, np.int64), num, den, seeded_bytes(0))


@pytest.mark.parametrize("source,msg", [
    (lambda n: b"\x00" * (n - 1), "returned"),
    (lambda n: "not bytes", "must return bytes"),
    (lambda n: 1 / 0, "raised"),
])
def test_a_failing_byte_source_is_an_error_not_zero_noise(source, msg):
    with pytest.raises(ValueError, match=msg):
        _core.dgauss_s64(np.empty(10, np.int64), 100, 1, source)


def test_output_array_must_be_int64_and_writable():
    with pytest.raises(ValueError, match="int64"):
        _core.dgauss_s64(np.empty(4, np.int32), 1, 1, seeded_bytes(0))
