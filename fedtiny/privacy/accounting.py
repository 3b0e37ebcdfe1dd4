"""epsilon for a DP-FedAvg run, from Google's dp-accounting (RDP accountant): one event per round.

A round releases the sum of the sampled devices' clipped updates plus Gaussian noise of std
z*C (C the clip bound). Device-level DP: neighbouring federations differ in one device's data.
Two samplings, each accounted as what the simulation really does (docs/privacy.md):

- "poisson": every device joins a round independently with probability q (the DP-FedAvg
  setting of McMahan et al., ICLR 2018). Add-or-remove-one neighbours; the sum's L2
  sensitivity is C, so the round is PoissonSampledDpEvent(q, GaussianDpEvent(z)).
- "fixed": exactly m of the N devices, drawn without replacement (fedtiny's default sampler).
  Only replace-one neighbours make sense with a fixed m (N is public); replacing one device's
  update moves the sum by up to 2C, so the round is SampledWithoutReplacementDpEvent(N, m,
  GaussianDpEvent(z / 2)) (Wang, Balle, Kasiviswanathan, AISTATS 2019, Theorem 27).

epsilon is dp-accounting's conversion from RDP (Canonne, Kamath, Steinke 2020, tighter than the
moments accountant's log(1/delta)/(alpha-1)); `classic_epsilon` gives the older conversion, only
to reproduce figures published with it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

SAMPLINGS = ("poisson", "fixed")


class _QuietOrders(logging.Filter):
    """dp-accounting logs a warning for each fractional order whose series does not converge and
    leaves that order out (the epsilon stays a valid bound): not something a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


def _dp():
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError:
        raise ImportError("differential privacy needs dp-accounting: pip install 'fedtiny[dp]'") from None
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrders) for f in absl.filters):
        absl.addFilter(_QuietOrders())
    return dp_accounting, rdp


@dataclass(frozen=True)
class Sampling:
    """Who is in a round: `kind` ("poisson" or "fixed"), population N and cohort m (q = m / N)."""

    kind: str
    population: int
    cohort: int

    def __post_init__(self):
        if self.kind not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.kind!r}")
        if not 1 <= self.cohort <= self.population:
            raise ValueError(f"devices per round must be in [1, {self.population}], got {self.cohort}")

    @property
    def q(self) -> float:
        return self.cohort / self.population


def _check(z: float, delta: float) -> None:
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"--noise-multiplier must be a positive number, got {z}")
    if not 0 < delta < 1:
        raise ValueError(f"--delta must be in (0, 1), got {delta}")


def round_event(sampling: Sampling, z: float):
    """The dp-accounting event of one round with noise multiplier z (noise std / clip bound)."""
    dpa, _ = _dp()
    if sampling.kind == "poisson":
        return dpa.PoissonSampledDpEvent(sampling.q, dpa.GaussianDpEvent(z))
    return dpa.SampledWithoutReplacementDpEvent(sampling.population, sampling.cohort, dpa.GaussianDpEvent(z / 2))


def new_accountant(sampling: Sampling):
    dpa, rdp = _dp()
    rel = (dpa.NeighboringRelation.ADD_OR_REMOVE_ONE if sampling.kind == "poisson"
           else dpa.NeighboringRelation.REPLACE_ONE)
    return rdp.RdpAccountant(neighboring_relation=rel)


def epsilon(sampling: Sampling, z: float, rounds: int, delta: float) -> float:
    """epsilon after `rounds` rounds at this delta (inf for z = inf is not a case: z > 0 finite)."""
    _check(z, delta)
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return 0.0
    acc = new_accountant(sampling)
    acc.compose(round_event(sampling, z), int(rounds))
    return float(acc.get_epsilon(delta))


def classic_epsilon(sampling: Sampling, z: float, rounds: int, delta: float) -> float:
    """epsilon by the moments accountant's conversion, min over orders of rdp + log(1/delta)/(alpha-1)
    (Abadi et al. 2016; Mironov 2017, Prop. 3): looser, for reproducing published figures only."""
    _check(z, delta)
    acc = new_accountant(sampling)
    acc.compose(round_event(sampling, z), int(rounds))
    orders = np.asarray(acc.orders, dtype=np.float64)
    return float(np.min(np.asarray(acc.rdp) + math.log(1 / delta) / (orders - 1)))


def calibrate(sampling: Sampling, target_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest z whose epsilon after `rounds` rounds is <= target_epsilon (dp-accounting's search)."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"--target-epsilon must be a positive number, got {target_epsilon}")
    _check(1.0, delta)
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1 to calibrate, got {rounds}")
    dpa, _ = _dp()
    from dp_accounting import mechanism_calibration as mc

    z = mc.calibrate_dp_mechanism(lambda: new_accountant(sampling), lambda z: dpa.SelfComposedDpEvent(
        round_event(sampling, z), int(rounds)), target_epsilon, delta,
        bracket_interval=mc.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4)
    # The search stops within tol of the optimum: step up until the budget really holds.
    while epsilon(sampling, z, rounds, delta) > target_epsilon:
        z += 1e-4
    return float(z)


class Accountant:
    """Privacy spent so far in a run: one round event per applied round; epsilon at the run's delta.

    RDP composes by addition, so the RDP curve of one round at a given (sampling, z) is computed
    once by dp-accounting and added per round (the fixed-size curve takes seconds to compute);
    epsilon is dp-accounting's conversion of the running sum, as RdpAccountant.get_epsilon does.
    A round may name its own sampling (the aggregator's fixed-size draw of m from the A devices
    alive in that round); every sampling of one run must have the same neighbouring relation.
    """

    def __init__(self, sampling: Sampling, delta: float):
        _check(1.0, delta)
        self.sampling = sampling
        self.delta = float(delta)
        self._per_round: dict[tuple[Sampling, float], np.ndarray] = {}
        self._orders: np.ndarray | None = None
        self._rdp: np.ndarray | None = None
        self.rounds = 0

    def _curve(self, z: float, sampling: Sampling | None = None) -> np.ndarray:
        _check(z, self.delta)
        s = self.sampling if sampling is None else sampling
        if (s.kind == "poisson") != (self.sampling.kind == "poisson"):
            raise ValueError(f"a run accounted with {self.sampling.kind} sampling cannot add a {s.kind} round")
        if (s, z) not in self._per_round:
            acc = new_accountant(s)
            acc.compose(round_event(s, z))
            self._orders = acc.orders
            self._per_round[(s, z)] = acc.rdp
        return self._per_round[(s, z)]

    def spend(self, z: float, sampling: Sampling | None = None) -> float:
        """Record one round released with noise multiplier z (and its own sampling, if it differs
        from the run's); returns epsilon so far."""
        curve = self._curve(z, sampling)
        self._rdp = curve.copy() if self._rdp is None else self._rdp + curve
        self.rounds += 1
        return self.epsilon()

    def _epsilon(self, rdp_curve: np.ndarray) -> float:
        _, rdp = _dp()
        return float(rdp.compute_epsilon(self._orders, rdp_curve, self.delta)[0])

    def epsilon(self) -> float:
        return self._epsilon(self._rdp) if self.rounds else 0.0

    def epsilon_if(self, z: float, sampling: Sampling | None = None) -> float:
        """epsilon if one more round with noise multiplier z were released (nothing is recorded)."""
        curve = self._curve(z, sampling)
        return self._epsilon(curve if self._rdp is None else self._rdp + curve)
