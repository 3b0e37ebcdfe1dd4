"""Round logic: who is in a round, what is accepted, when it closes, and the server step.

Plain Python, no I/O and no clock of its own: every caller (the simulation, the UDP aggregator,
a bridge) passes `now` in and moves the bytes itself. One Server holds the global model, ONE
fedtiny.fedavg.Accumulator and the server optimizer's state, so its memory is O(model) whatever
the number of clients; a Round adds a few bytes per participant (who already answered).
Updates arrive whole: a transport that receives them in chunks stages and checks them first
(fedtiny/net/ingest.py, the one chunk-wise ingest policy: nothing partial ever reaches the sum).

Policies (each one named, each one tested):
- An update for another round, from a device not selected, or after the round closed is
  rejected with a named reason and counted; nothing of it reaches the accumulator.
- A second copy of an update is ignored and counted as a duplicate.
- A round closes as soon as `min_updates` complete updates are in (default: every selected
  device), or at its deadline with whoever answered; stragglers are left out. With fewer than
  `quorum` complete updates at close, the round is abandoned: the sum is discarded, the model
  stays as it was.
- FedNova (Wang et al. 2020) normalisation for heterogeneous local steps: each update is
  weighted n_k / tau_k and the mean is rescaled by tau_eff * sum(n_k / tau_k) / n, with
  tau_eff = sum(n_k tau_k) / n. With equal steps it is exactly FedAvg.
- Staleness in a synchronous round: an update for round `round_id - s` is accepted when
  s <= max_staleness (0 = synchronous rounds), weighted n_k * staleness_weight(s) in the mean.
- Asynchronous buffered aggregation (FedBuff, Nguyen et al. 2022; Server.open_buffer): a
  "round" is a buffer of K updates from whoever arrives (open membership). A device tags its
  update with the round that was open when it downloaded the model (model version = that round
  - 1); its staleness tau is the current round minus that tag. tau > max_staleness: rejected,
  too_stale, nothing of it reaches the model; tau < 0 (a round not opened yet): wrong_round.
  Accepted updates are added as deltas weighted n_k * s(tau) over a denominator of sum n_k, so
  a stale update moves the model less than a fresh one (unlike the synchronous hook above,
  where only the relative weights change); s is const (1), poly ((1 + tau)^-a, a = 0.5 by
  default) or hinge (1 up to tau = b, then 1 / (a (tau - b) + 1)) (staleness_function). The
  buffer closes after K accepted updates and the server optimizer takes its step on the mean.
  The same device may send several updates into one buffer from different model versions; a
  second update with the same (device, tag) is a duplicate. The aggregator keeps what a
  synchronous round keeps (weights, one accumulator, the mean buffer, the optimizer state)
  plus at most K (device, tag) pairs; it never keeps old model versions (a device downloads
  the current model whole; the simulation's downloads are instantaneous).
- Hierarchical aggregation: submit_partial adds a bridge's mean delta with its total weight
  (sum n_k of its devices), which puts exactly sum n_k delta_k into the sum.
- Secure aggregation (fedtiny.privacy.secagg): the aggregator never sees one device's update,
  only the unmasked mean of the survivors; submit_secure_mean adds it for all of them at once,
  each device weighted equally (sample counts are not revealed). Per-message admission is the
  secure round's (its own named rejections); a round whose secure stage aborted gets nothing
  and is abandoned at close below quorum, the model unchanged.
- Bounds on one device (fedtiny.bounds, when the Server has them): an n_k that is not a whole
  number in [1, max_samples] is rejected (too_many_samples / bad_samples); an update whose L2
  norm exceeds clip_norm is added scaled down to that norm and counted as clipped.
- A server step that would make the model NaN or Inf is refused: the round is abandoned with
  reason nonfinite_step, the model and the optimizer state stay as they were.
"""
from __future__ import annotations

import inspect
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from . import bounds as bounds_mod
from .bounds import Bounds
from .codec import Int8Update
from .fedavg import Accumulator

# Verdict reasons. Only ACCEPTED changes the sum; DUPLICATE is harmless; the rest are rejections.
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
WRONG_ROUND = "wrong_round"
NOT_SELECTED = "not_selected"
ROUND_CLOSED = "round_closed"
BAD_UPDATE = "bad_update"
TOO_STALE = "too_stale"          # asynchronous mode: computed from a model older than max_staleness


@dataclass(frozen=True)
class Verdict:
    """What the round did with one message: accepted, ignored as duplicate, or rejected (reason, detail)."""

    reason: str
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason == ACCEPTED

    def __bool__(self) -> bool:
        return self.accepted


# --- client sampling --------------------------------------------------------------------------

def n_sampled(population: int, fraction: float, minimum: int = 1) -> int:
    """McMahan's m = max(C*K, 1), rounded to the nearest integer (0.29*100 must give 29, not 28)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"client fraction must be in (0, 1], got {fraction}")
    return min(population, max(int(minimum), int(round(fraction * population))))


def sample_clients(population: int | Iterable[int], fraction: float, *, seed: int, round_id: int,
                   minimum: int = 1) -> np.ndarray:
    """The device ids taking part in round `round_id`: a seeded draw without replacement.

    population: K (ids 0..K-1) or the ids available now. The draw depends only on (seed,
    round_id, population), not on earlier draws, so a restarted aggregator draws the same.
    """
    ids = np.arange(population) if isinstance(population, (int, np.integer)) else np.unique(np.fromiter(population, np.int64))
    if ids.size == 0:
        raise ValueError("no clients to sample from")
    m = n_sampled(ids.size, fraction, minimum)
    rng = np.random.default_rng([int(seed), int(round_id), 0xC11E])
    return np.sort(rng.choice(ids, size=m, replace=False))


# --- server optimizers ------------------------------------------------------------------------

class ServerOptimizer:
    """w <- w + step(mean delta); FedAvg is lr = 1. State is O(model), never per client."""

    name = "fedavg"

    def __init__(self, lr: float = 1.0):
        self.lr = _positive("server lr", lr)

    def step(self, params: np.ndarray, delta: np.ndarray) -> None:
        params += np.float32(self.lr) * delta

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.state().values())

    def __repr__(self) -> str:
        hyper = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in hyper.items())})"


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): v <- beta v + delta; w <- w + lr v."""

    name = "fedavgm"

    def __init__(self, lr: float = 1.0, momentum: float = 0.9):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"server momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self._v: np.ndarray | None = None

    def step(self, params: np.ndarray, delta: np.ndarray) -> None:
        if self._v is None:
            self._v = np.zeros_like(params)
        self._v *= np.float32(self.momentum)
        self._v += delta
        params += np.float32(self.lr) * self._v

    def state(self) -> dict[str, np.ndarray]:
        return {} if self._v is None else {"v": self._v}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._v = state.get("v")


class FedAdam(ServerOptimizer):
    """Adaptive server step (Reddi et al. 2021, FedAdam; no bias correction, as in the paper).

    m <- b1 m + (1-b1) d;  v <- b2 v + (1-b2) d^2;  w <- w + eta m / (sqrt(v) + tau)
    """

    name = "fedadam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        super().__init__(lr)
        for nm, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"FedAdam {nm} must be in [0, 1), got {b}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.tau = _positive("FedAdam tau", tau)
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None

    def step(self, params: np.ndarray, delta: np.ndarray) -> None:
        if self._m is None:
            self._m, self._v = np.zeros_like(params), np.zeros_like(params)
        b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
        self._m *= b1
        self._m += (1 - b1) * delta
        self._v *= b2
        self._v += (1 - b2) * np.square(delta)
        params += np.float32(self.lr) * self._m / (np.sqrt(self._v) + np.float32(self.tau))

    def state(self) -> dict[str, np.ndarray]:
        return {} if self._m is None else {"m": self._m, "v": self._v}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._m, self._v = state.get("m"), state.get("v")


SERVER_OPTIMIZERS = {"fedavg": ServerOptimizer, "fedavgm": FedAvgM, "fedadam": FedAdam}


def make_server_optimizer(name: str, **hyper: float) -> ServerOptimizer:
    """fedavg(lr), fedavgm(lr, momentum) or fedadam(lr, beta1, beta2, tau); None values take defaults."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {name!r}: use one of {', '.join(SERVER_OPTIMIZERS)}")
    cls = SERVER_OPTIMIZERS[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    given = {k: v for k, v in hyper.items() if v is not None}
    extra = set(given) - allowed
    if extra:
        raise ValueError(f"server optimizer {name} takes {', '.join(sorted(allowed))}, not {', '.join(sorted(extra))}")
    return cls(**given)


def _positive(what: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return v


# --- staleness weighting (FedBuff) -------------------------------------------------------------

STALENESS_KINDS = ("poly", "const", "hinge")


def staleness_function(kind: str = "poly", *, exponent: float = 0.5, hinge_at: int = 4,
                       hinge_slope: float = 1.0) -> Callable[[int], float]:
    """s(tau) in (0, 1], the weight of an update tau server steps old (Nguyen et al. 2022, sec. 4).

    const: 1; poly: (1 + tau)^-exponent (exponent 0.5: the paper's 1/sqrt(1 + tau));
    hinge: 1 while tau <= hinge_at, then 1 / (hinge_slope (tau - hinge_at) + 1).
    """
    if kind == "const":
        return lambda tau: 1.0
    if kind == "poly":
        a = float(exponent)
        if not (math.isfinite(a) and a >= 0):
            raise ValueError(f"staleness exponent must be a number >= 0, got {exponent!r}")
        return lambda tau: (1.0 + tau) ** -a
    if kind == "hinge":
        b, a = int(hinge_at), float(hinge_slope)
        if b < 0 or b != hinge_at:
            raise ValueError(f"hinge point must be a whole number of server steps >= 0, got {hinge_at!r}")
        if not (math.isfinite(a) and a > 0):
            raise ValueError(f"hinge slope must be a positive number, got {hinge_slope!r}")
        return lambda tau: 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ValueError(f"unknown staleness weighting {kind!r}: use one of {', '.join(STALENESS_KINDS)}")


# FedBuff's defaults and flags, one definition for `fedtiny simulate` and `fedtiny aggregate`
DEFAULT_BUFFER, DEFAULT_CONCURRENCY, DEFAULT_MAX_STALENESS = 10, 20, 20
STALENESS_PARAMS = ("staleness_exponent", "hinge_at", "hinge_slope")


def staleness_from_flags(kind: str | None, *, staleness_exponent: float | None = None, hinge_at: int | None = None,
                         hinge_slope: float | None = None) -> Callable[[int], float]:
    """s(tau) as --staleness and its parameters name it (None: the default); a parameter of
    another kind or a bad value is one ValueError naming the flag."""
    kind = kind or "poly"
    if kind not in STALENESS_KINDS:
        raise ValueError(f"--staleness must be one of {', '.join(STALENESS_KINDS)}, got {kind!r}")
    if staleness_exponent is not None and kind != "poly":
        raise ValueError("--staleness-exponent applies to --staleness poly")
    if (hinge_at is not None or hinge_slope is not None) and kind != "hinge":
        raise ValueError("--hinge-at and --hinge-slope apply to --staleness hinge")
    kw = {k: v for k, v in (("exponent", staleness_exponent), ("hinge_at", hinge_at), ("hinge_slope", hinge_slope))
          if v is not None}
    try:
        return staleness_function(kind, **kw)
    except ValueError as exc:
        raise ValueError(f"--staleness {kind}: {exc}") from None


def add_async_arguments(g, *, concurrency_default: str = str(DEFAULT_CONCURRENCY)) -> None:
    """--buffer, --concurrency, --max-staleness, --staleness and its parameters (argparse group g)."""
    g.add_argument("--buffer", type=int, default=None, metavar="K",
                   help=f"async: updates per server step (default {DEFAULT_BUFFER})")
    g.add_argument("--concurrency", type=int, default=None, metavar="M",
                   help=f"async: devices training at once (default {concurrency_default})")
    g.add_argument("--max-staleness", type=int, default=None, metavar="S",
                   help=f"async: an update more than S server steps old is refused (default {DEFAULT_MAX_STALENESS})")
    g.add_argument("--staleness", default=None, choices=STALENESS_KINDS,
                   help="async: weight s(tau) of an update tau steps old: poly (1+tau)^-a, const 1, hinge "
                        "(1 up to tau=b, then 1/(slope*(tau-b)+1)) (default poly)")
    g.add_argument("--staleness-exponent", type=float, default=None, metavar="A",
                   help="async, poly: the exponent a (default 0.5)")
    g.add_argument("--hinge-at", type=int, default=None, metavar="B", help="async, hinge: b (default 4)")
    g.add_argument("--hinge-slope", type=float, default=None, help="async, hinge: the slope (default 1)")


# --- rounds -----------------------------------------------------------------------------------

@dataclass
class RoundResult:
    """What a closed round did (the metrics a caller logs)."""

    round_id: int
    outcome: str                      # "applied" or "abandoned"
    closed_by: str                    # "all", "min_updates", "deadline" or "forced"
    selected: int                     # how many devices were asked (-1: open membership)
    contributors: list[int]           # devices whose complete update went into the model (sorted; async: with repeats)
    stragglers: list[int]             # selected, no complete update at close
    n_samples: float                  # sum of n_k of complete updates
    rejected: dict[str, int] = field(default_factory=dict)
    detail: str = ""


class Round:
    """One round's admission control; created by Server.open_round, closed by Server.close_round."""

    def __init__(self, server: "Server", round_id: int, selected: Sequence[int] | None, *, deadline: float | None,
                 min_updates: int | None, quorum: int, max_staleness: int,
                 staleness_weight: Callable[[int], float] | None, asynchronous: bool = False):
        self._server = server
        self.round_id = int(round_id)
        self.selected = None if selected is None else frozenset(int(d) for d in selected)
        if self.selected is not None and not self.selected:
            raise ValueError("a round needs at least one selected device")
        if min_updates is None:
            if self.selected is None:
                raise ValueError("open membership (selected=None) needs min_updates")
            min_updates = len(self.selected)
        if int(min_updates) < 1 or (self.selected is not None and int(min_updates) > len(self.selected)):
            raise ValueError(f"min_updates must be in [1, number selected], got {min_updates}")
        if int(quorum) < 1:
            raise ValueError(f"quorum must be >= 1, got {quorum}")
        if int(max_staleness) < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.min_updates = int(min_updates)
        self.quorum = int(quorum)
        self.deadline = deadline
        self.max_staleness = int(max_staleness)
        self.staleness_weight = staleness_weight or (lambda s: 1.0)
        self.asynchronous = bool(asynchronous)
        if self.asynchronous and self.selected is not None:
            raise ValueError("an asynchronous buffer has open membership (selected=None)")
        self.closed = False
        self.counts: Counter[str] = Counter()
        self.staleness_sum = 0                     # sum of tau over accepted updates (asynchronous)
        self.staleness_max = 0
        # device -> n_k of its complete update; asynchronous: (device, tag) -> n_k
        self._done: dict[int | tuple[int, int], float] = {}
        self._n = 0.0                              # sum n_k (complete)
        self._n_tau = 0.0                          # sum n_k tau_k (complete, FedNova)
        self._weight = 0.0                         # sum of accumulator weights (complete)

    # -- admission --
    def _admit(self, device: int, round_id: int) -> tuple[Verdict | None, int]:
        if self.closed:
            return self._count(ROUND_CLOSED, f"round {self.round_id} is closed: device {device} sent round {round_id} too late"), 0
        staleness = self.round_id - int(round_id)
        if self.asynchronous and staleness > self.max_staleness:
            return self._count(TOO_STALE, f"device {device}: its update from round {round_id} is {staleness} server "
                                          f"steps old, more than --max-staleness {self.max_staleness}"), 0
        if staleness < 0 or staleness > self.max_staleness:
            return self._count(WRONG_ROUND, f"update for round {self.round_id} rejected: device {device} sent round {round_id}"), 0
        if self.selected is not None and device not in self.selected:
            return self._count(NOT_SELECTED, f"device {device} is not in round {self.round_id}"), 0
        if self._key(device, round_id) in self._done:
            return self._count(DUPLICATE, f"device {device} already sent its update for round {self.round_id}"), 0
        return None, staleness

    def _key(self, device: int, round_id: int) -> int | tuple[int, int]:
        return (device, int(round_id)) if self.asynchronous else device

    def _count(self, reason: str, detail: str = "") -> Verdict:
        self.counts[reason] += 1
        return Verdict(reason, detail)

    def _weight_of(self, device: int, n_samples: float, steps: float | None, staleness: int) -> tuple[float, float]:
        n = float(n_samples)
        if not (math.isfinite(n) and n > 0):
            raise ValueError(f"device {device}: sample count must be positive, got {n_samples!r}")
        tau = 1.0 if steps is None else float(steps)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"device {device}: local steps must be positive, got {steps!r}")
        if self._server.normalization == "fednova" and steps is None:
            raise ValueError(f"device {device}: FedNova normalisation needs the number of local steps")
        w = n / tau if self._server.normalization == "fednova" else n
        s = float(self.staleness_weight(staleness))
        if not (math.isfinite(s) and 0 < s <= 1):
            raise ValueError(f"staleness weight s({staleness}) must be in (0, 1], got {s!r}")
        return w, s, tau

    def _complete(self, device: int | tuple[int, int], n_samples: float, tau: float, weight: float,
                  weight_counted: bool = False) -> None:
        self._done[device] = float(n_samples)
        self._n += float(n_samples)
        self._n_tau += float(n_samples) * tau
        self._weight += weight
        if not weight_counted:  # chunks are added without weight; it counts once the update is whole
            self._server.accumulator.add_weight(weight)

    def submit(self, device: int, round_id: int, update: Int8Update | np.ndarray, n_samples: float, *,
               steps: float | None = None, _devices: int = 1) -> Verdict:
        """A whole update (Int8Update or float32 delta) from `device`, trained on n_samples for `steps` steps."""
        device = int(device)
        verdict, staleness = self._admit(device, round_id)
        if verdict is not None:
            return verdict
        limits = self._server.bounds
        # a bridge's partial sum may hold up to max_samples for each of its devices
        problem = limits.check_samples(n_samples, devices=_devices) if limits.max_samples is not None else None
        if problem is not None:
            reason, _, text = problem.partition(": ")
            return self._count(reason, f"device {device}: {text}")
        try:
            weight, s, tau = self._weight_of(device, n_samples, steps, staleness)
            norm = bounds_mod.update_norm(update) if limits.clip_norm is not None else 0.0
            factor = bounds_mod.clip_factor(norm, limits.clip_norm)
            if self.asynchronous:  # n_k s(tau) delta over a denominator of n_k: stale updates move the model less
                scale = factor * s
            else:                  # the synchronous hook: s only changes the relative weights
                weight *= s
                scale = factor
            # validates size and finiteness, counts the weight n_k, adds scale * update
            self._server.accumulator.add(update, weight, scale)
        except ValueError as exc:
            return self._count(BAD_UPDATE, f"device {device}: {exc}")
        self._complete(self._key(device, round_id), n_samples, tau, weight, weight_counted=True)
        self.staleness_sum += staleness
        self.staleness_max = max(self.staleness_max, staleness)
        self.counts[ACCEPTED] += 1
        if factor < 1.0:
            self.counts[bounds_mod.CLIPPED] += 1
            return Verdict(ACCEPTED, f"{bounds_mod.CLIPPED}: device {device}'s update of norm {norm:.4g} "
                                     f"scaled to {limits.clip_norm:g}")
        return Verdict(ACCEPTED)

    def submit_partial(self, device: int, round_id: int, mean_delta: Int8Update | np.ndarray,
                       total_weight: float, n_updates: int = 1) -> Verdict:
        """A bridge's partial aggregate: the weighted mean of its devices' deltas and their total n_k."""
        if self._server.normalization == "fednova":
            raise ValueError("partial sums under FedNova need per-device steps; not supported yet")
        if self.asynchronous:
            raise ValueError("partial sums in an asynchronous buffer are not supported: each device's staleness differs")
        # the mean of clipped updates has norm <= clip_norm, so clipping the mean again is the bound
        verdict = self.submit(device, round_id, mean_delta, total_weight, _devices=max(1, int(n_updates)))
        if verdict.accepted:
            self.counts["partial_updates"] += max(0, int(n_updates) - 1)
        return verdict

    def submit_secure_mean(self, devices: Sequence[int], round_id: int, mean_delta: np.ndarray) -> Verdict:
        """The unmasked mean delta of `devices` (a secure round's survivors), each with weight 1."""
        devices = sorted({int(d) for d in devices})
        if not devices:
            raise ValueError("a secure mean needs at least one device")
        if self.asynchronous:
            raise ValueError("secure aggregation needs synchronous rounds")
        for d in devices:
            verdict, _ = self._admit(d, round_id)
            if verdict is not None:
                return verdict
        if self._server.normalization == "fednova":
            raise ValueError("secure aggregation with FedNova needs per-device steps; not supported")
        try:
            self._server.accumulator.add(mean_delta, float(len(devices)))
        except ValueError as exc:
            return self._count(BAD_UPDATE, f"secure mean of {len(devices)} devices: {exc}")
        for d in devices:
            self._complete(d, 1.0, 1.0, 1.0, weight_counted=True)
        return self._count(ACCEPTED)

    # -- closing --
    @property
    def n_complete(self) -> int:
        return len(self._done)

    def should_close(self, now: float | None = None) -> bool:
        """True once min_updates complete updates are in, or when the deadline has passed."""
        if self.closed:
            return False
        if self.n_complete >= self.min_updates:
            return True
        return self.deadline is not None and now is not None and now >= self.deadline

    def _closed_by(self, now: float | None) -> str:
        if self.selected is not None and self.n_complete == len(self.selected):
            return "all"
        if self.n_complete >= self.min_updates:
            return "min_updates"
        if self.deadline is not None and now is not None and now >= self.deadline:
            return "deadline"
        return "forced"


class Server:
    """The global model, one Accumulator and the server optimizer: the aggregator's O(model) state."""

    def __init__(self, params: np.ndarray, *, optimizer: ServerOptimizer | str = "fedavg",
                 normalization: str = "none", bounds: Bounds | None = None,
                 sum_stage: Callable[[Accumulator, "Round"], float] | None = None):
        """bounds: what one device may contribute (fedtiny.bounds); None: no cap and no clipping.
        sum_stage(accumulator, round) -> denominator: a transform of the round's sum before the
        server step (central DP adds its noise there and divides by the expected devices)."""
        if not isinstance(params, np.ndarray) or params.dtype != np.float32 or params.ndim != 1:
            raise ValueError("global params must be a 1-D float32 array")
        if normalization not in ("none", "fednova"):
            raise ValueError(f"normalization must be 'none' or 'fednova', got {normalization!r}")
        self.params = np.ascontiguousarray(params)
        self.optimizer = make_server_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
        self.normalization = normalization
        if sum_stage is not None and normalization != "none":
            raise ValueError("a sum stage (differential privacy) needs uniform device weights: drop --normalize")
        self.sum_stage = sum_stage
        self.bounds = bounds if bounds is not None else Bounds(max_samples=None, clip_norm=None)
        if not bounds_mod.all_finite(self.params):
            raise ValueError("global params hold NaN or Inf")
        self.accumulator = Accumulator(self.params.size)
        self._mean: np.ndarray | None = None  # the averaged delta, allocated once, only when needed
        self.round_id = 0
        self.current: Round | None = None

    @property
    def n_params(self) -> int:
        return int(self.params.size)

    def open_round(self, selected: Sequence[int] | None, *, deadline: float | None = None,
                   min_updates: int | None = None, quorum: int = 1, max_staleness: int = 0,
                   staleness_weight: Callable[[int], float] | None = None, asynchronous: bool = False) -> Round:
        """Start round self.round_id + 1 (the first is 1) for the selected devices (None: anyone)."""
        if self.current is not None and not self.current.closed:
            raise ValueError(f"round {self.current.round_id} is still open: close it first")
        self.accumulator.reset()
        self.current = Round(self, self.round_id + 1, selected, deadline=deadline, min_updates=min_updates,
                             quorum=quorum, max_staleness=max_staleness, staleness_weight=staleness_weight,
                             asynchronous=asynchronous)
        self.round_id += 1
        return self.current

    def open_buffer(self, size: int, *, max_staleness: int,
                    staleness_weight: Callable[[int], float] | None = None) -> Round:
        """FedBuff: the next asynchronous buffer; it should close after `size` accepted updates.

        A device downloading now tags its update with the returned round's round_id."""
        if int(size) < 1:
            raise ValueError(f"buffer size K must be >= 1, got {size}")
        return self.open_round(None, min_updates=int(size), max_staleness=max_staleness,
                               staleness_weight=staleness_weight or staleness_function(), asynchronous=True)

    def close_round(self, now: float | None = None) -> RoundResult:
        """Close the open round: apply the averaged update (or abandon it below quorum); report who was in."""
        rnd = self.current
        if rnd is None or rnd.closed:
            raise ValueError("no open round to close")
        closed_by = rnd._closed_by(now)
        rnd.closed = True
        stragglers = sorted(set(rnd.selected or ()) - set(rnd._done))  # async: selected is None, no stragglers
        result = RoundResult(rnd.round_id, "applied", closed_by, -1 if rnd.selected is None else len(rnd.selected),
                             sorted(k[0] if isinstance(k, tuple) else k for k in rnd._done), stragglers, rnd._n,
                             {k: v for k, v in rnd.counts.items() if k not in (ACCEPTED,)})
        if rnd.n_complete < rnd.quorum:
            self.accumulator.reset()
            result.outcome = "abandoned"
            result.detail = (f"round {rnd.round_id} abandoned: {rnd.n_complete} complete update(s) at close, "
                             f"quorum {rnd.quorum}; the model is unchanged")
            return result
        refused = self._apply(rnd)
        if refused is not None:
            result.outcome = "abandoned"
            result.rejected[bounds_mod.NONFINITE_STEP] = 1
            result.detail = f"round {rnd.round_id} abandoned: {bounds_mod.NONFINITE_STEP}: {refused}; the model is unchanged"
        return result

    def _apply(self, rnd: Round) -> str | None:
        """The server step, committed only if the new model is finite; else why it was refused."""
        acc = self.accumulator
        scale = 1.0
        if self.normalization == "fednova":
            tau_eff = rnd._n_tau / rnd._n
            scale = tau_eff * rnd._weight / rnd._n
        denominator = self.sum_stage(acc, rnd) if self.sum_stage is not None else None
        if self._mean is None:  # one model-sized scratch buffer: the candidate model or the mean delta
            self._mean = np.zeros(self.params.size, np.float32)   # np.zeros: traced under this file
        plain = type(self.optimizer) is ServerOptimizer and self.optimizer.lr == 1.0 and scale == 1.0
        if plain:  # FedAvg: w += sum(n_k delta_k) / sum(n_k), in one C pass over the accumulator
            candidate = self._mean
            np.copyto(candidate, self.params)
            acc.apply(candidate, denominator)
            if not bounds_mod.all_finite(candidate):
                return "the averaged update would make the model NaN or Inf"
            np.copyto(self.params, candidate)
            return None
        mean = self._mean
        mean.fill(0.0)
        acc.apply(mean, denominator)
        if scale != 1.0:
            mean *= np.float32(scale)
        if not bounds_mod.all_finite(mean):
            return "the averaged update holds NaN or Inf"
        # The optimizer updates its state and the model in place: keep copies to put back.
        saved = self.params.copy(), {k: v.copy() for k, v in self.optimizer.state().items()}
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what the check below catches
            self.optimizer.step(self.params, mean)
        if bounds_mod.all_finite(self.params) and all(bounds_mod.all_finite(v) for v in self.optimizer.state().values()):
            return None
        np.copyto(self.params, saved[0])
        self.optimizer.load_state(saved[1])  # {} before the first step: back to no state
        return f"the {self.optimizer.name} step would make the model or its state NaN or Inf"

    @property
    def nbytes(self) -> int:
        """Bytes of the aggregator's model-sized state: weights, sum, mean buffer, optimizer state."""
        return (int(self.params.nbytes) + self.accumulator.nbytes
                + (0 if self._mean is None else int(self._mean.nbytes)) + self.optimizer.nbytes)
