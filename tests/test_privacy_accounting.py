"""The accountant against dp-accounting computed directly, and against a published figure."""
import math

import pytest

dpa = pytest.importorskip("dp_accounting")
from dp_accounting import rdp  # noqa: E402

from fedtiny.privacy import accounting  # noqa: E402
from fedtiny.privacy.accounting import Sampling  # noqa: E402

CASES = [  # (population, cohort, z, rounds, delta)
    (1000, 100, 1.0, 100, 1e-5),
    (1000, 100, 0.8, 50, 1e-5),
    (100, 10, 1.5, 200, 1e-6),
    (60000, 256, 1.1, 14062, 1e-5),
    (500, 5, 3.0, 1000, 1e-3),
]


@pytest.mark.parametrize("population,cohort,z,rounds,delta", CASES)
def test_poisson_epsilon_equals_dp_accounting_direct(population, cohort, z, rounds, delta):
    direct = rdp.RdpAccountant()  # add-or-remove-one is its default relation
    direct.compose(dpa.PoissonSampledDpEvent(cohort / population, dpa.GaussianDpEvent(z)), rounds)
    ours = accounting.epsilon(Sampling("poisson", population, cohort), z, rounds, delta)
    assert ours == direct.get_epsilon(delta)


@pytest.mark.parametrize("population,cohort,z,rounds,delta", CASES[:3])
def test_fixed_size_epsilon_equals_dp_accounting_direct_at_half_z(population, cohort, z, rounds, delta):
    # replace-one neighbours: one device's clipped update swapped for another moves the sum by 2C
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    direct.compose(dpa.SampledWithoutReplacementDpEvent(population, cohort, dpa.GaussianDpEvent(z / 2)), rounds)
    ours = accounting.epsilon(Sampling("fixed", population, cohort), z, rounds, delta)
    assert ours == direct.get_epsilon(delta)
    assert ours > accounting.epsilon(Sampling("poisson", population, cohort), z, rounds, delta)


def test_abadi_2016_moments_accountant_figure():
    # Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Section 3.1 (after
    # Theorem 1): q = 0.01, sigma = 4, delta = 1e-5, T = 10000 gives epsilon ~ 1.26 with the
    # moments accountant (against ~9.34 by strong composition).
    s = Sampling("poisson", 10000, 100)
    assert round(accounting.classic_epsilon(s, 4.0, 10000, 1e-5), 2) == 1.26
    # dp-accounting's conversion (Canonne, Kamath, Steinke 2020) is tighter on the same RDP curve
    tight = accounting.epsilon(s, 4.0, 10000, 1e-5)
    assert 0.9 < tight < 1.26


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_calibrate_meets_the_target_and_is_the_smallest(target):
    s = Sampling("poisson", 1000, 100)
    z = accounting.calibrate(s, target, 100, 1e-5)
    assert accounting.epsilon(s, z, 100, 1e-5) <= target
    assert accounting.epsilon(s, z * 0.99, 100, 1e-5) > target


def test_accountant_round_by_round_equals_one_composition():
    s = Sampling("poisson", 1000, 100)
    acc = accounting.Accountant(s, 1e-5)
    assert acc.epsilon() == 0.0
    eps = [acc.spend(1.2) for _ in range(20)]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    assert eps[-1] == pytest.approx(accounting.epsilon(s, 1.2, 20, 1e-5), rel=1e-12)
    assert acc.epsilon_if(1.2) == pytest.approx(accounting.epsilon(s, 1.2, 21, 1e-5), rel=1e-12)
    assert acc.rounds == 20


@pytest.mark.parametrize("kw,msg", [
    (dict(z=0.0), "--noise-multiplier"), (dict(z=math.inf), "--noise-multiplier"), (dict(z=math.nan), "--noise-multiplier"),
    (dict(delta=0.0), "--delta"), (dict(delta=1.0), "--delta"),
])
def test_bad_parameters_name_the_flag(kw, msg):
    args = dict(z=1.0, delta=1e-5) | kw
    with pytest.raises(ValueError, match=msg):
        accounting.epsilon(Sampling("poisson", 100, 10), args["z"], 10, args["delta"])


def test_bad_sampling():
    with pytest.raises(ValueError, match="sampling"):
        Sampling("bernoulli", 100, 10)
    with pytest.raises(ValueError, match="devices per round"):
        Sampling("poisson", 100, 101)
    with pytest.raises(ValueError, match="--target-epsilon"):
        accounting.calibrate(Sampling("poisson", 100, 10), 0.0, 10, 1e-5)


def test_accountant_with_changing_z_equals_dp_accounting_composition():
    s = Sampling("fixed", 200, 20)
    acc = accounting.Accountant(s, 1e-5)
    for z in (1.0, 1.0, 2.0, 1.0, 3.0):
        acc.spend(z)
    direct = accounting.new_accountant(s)
    for z, n in ((1.0, 3), (2.0, 1), (3.0, 1)):
        direct.compose(accounting.round_event(s, z), n)
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
