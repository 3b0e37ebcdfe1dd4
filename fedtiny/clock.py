"""Simulated devices on a clock: how fast each one trains and when it is reachable.

Used by `fedtiny simulate` to put synchronous FedAvg and asynchronous FedBuff on the same
simulated time axis. Everything derives from the run's seed (fedtiny.seeds.derive_seed), so a
run is reproducible; nothing here reads a real clock.

- Speed: local SGD steps per second, log-uniform in [speed_min, speed_min * spread]
  (spread 1: every device the same). Seeded with derive_seed(seed, 0x5BEED).
- Speed tied to data (`--speed-by label`): the same speeds, handed out in the order of each
  device's dominant label (the label it holds most of; ties in a seeded random order,
  derive_seed(seed, 0x5BEED, 1)): the slowest devices see mostly label 0, the fastest mostly
  the last label (speeds_by_key).
- Availability: each device alternates on and off periods of exponential length, means
  on_mean and off_mean seconds; at time 0 it is on with probability on_mean / (on_mean +
  off_mean) (the stationary share) and its first period is a fresh exponential draw (memoryless,
  so also stationary). Device k's periods come from derive_seed(seed, 0xA7A1, k), generated
  lazily as far as the run needs. Or on-intervals from a CSV file: `device,start_s,end_s` per
  line (header optional); a device with no line is never available.
- Training only progresses while a device is on: a device that goes off mid-training pauses
  and resumes when it comes back (a phone put to sleep, a board that reboots and reloads its
  checkpoint), so a task's finish time is when its on-time adds up to steps / speed.
"""
from __future__ import annotations

import bisect
import csv
import math

import numpy as np

from .seeds import derive_seed

INF = math.inf


def device_speeds(n: int, *, seed: int, speed_min: float = 1.0, spread: float = 1.0) -> np.ndarray:
    """Local steps per second of n devices, log-uniform in [speed_min, speed_min * spread]."""
    if not (math.isfinite(speed_min) and speed_min > 0):
        raise ValueError(f"--speed-min must be a positive number of steps per second, got {speed_min}")
    if not (math.isfinite(spread) and spread >= 1):
        raise ValueError(f"--speed-spread must be >= 1 (fastest / slowest), got {spread}")
    u = np.random.default_rng(derive_seed(seed, 0x5BEED)).random(n)
    return speed_min * np.exp(u * math.log(spread))


def speeds_by_key(speeds: np.ndarray, key: np.ndarray, *, seed: int) -> np.ndarray:
    """The same speeds handed out in the order of key: the device with the smallest key gets the
    slowest speed, the largest key the fastest; devices with equal keys in a seeded random order
    (derive_seed(seed, 0x5BEED, 1)). speeds_by_key(s, key)[k] is the speed of device k."""
    speeds, key = np.asarray(speeds, np.float64), np.asarray(key)
    if key.shape != speeds.shape:
        raise ValueError(f"one key per device: {key.shape} keys for {speeds.shape} speeds")
    tie = np.random.default_rng(derive_seed(seed, 0x5BEED, 1)).random(speeds.size)
    order = np.lexsort((tie, key))           # devices, slowest-to-be first
    out = np.empty_like(speeds)
    out[order] = np.sort(speeds)
    return out


class Availability:
    """On-intervals per device, [start, end) sorted and disjoint; queried at any simulated time."""

    def __init__(self, n: int):
        self.n = int(n)
        self._starts: list[list[float]] = [[] for _ in range(self.n)]
        self._ends: list[list[float]] = [[] for _ in range(self.n)]

    # -- makers --
    @classmethod
    def always(cls, n: int) -> "Availability":
        a = cls(n)
        for k in range(n):
            a._starts[k].append(0.0)
            a._ends[k].append(INF)
        return a

    @classmethod
    def markov(cls, n: int, *, seed: int, on_mean: float, off_mean: float) -> "Availability":
        for name, v in (("--on-mean", on_mean), ("--off-mean", off_mean)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v}")
        a = _Markov(n, seed, float(on_mean), float(off_mean))
        return a

    @classmethod
    def from_csv(cls, path: str, n: int) -> "Availability":
        """device,start_s,end_s lines (a header line is skipped); intervals of a device may come in any order."""
        a = cls(n)
        spans: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        with open(path, newline="") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row or row[0].strip().startswith("#"):
                    continue
                if lineno == 1 and not row[0].strip().lstrip("-").isdigit():
                    continue  # header
                if len(row) != 3:
                    raise ValueError(f"{path}:{lineno}: want device,start_s,end_s, got {len(row)} fields")
                try:
                    k, t0, t1 = int(row[0]), float(row[1]), float(row[2])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: want device,start_s,end_s as numbers, got {','.join(row)!r}") from None
                if not 0 <= k < n:
                    raise ValueError(f"{path}:{lineno}: device {k} is outside 0..{n - 1} (--clients {n})")
                if not (math.isfinite(t0) and t0 >= 0 and t1 > t0):
                    raise ValueError(f"{path}:{lineno}: want 0 <= start_s < end_s, got {t0}, {t1}")
                spans[k].append((t0, t1))
        for k, s in enumerate(spans):
            s.sort()
            for (a0, a1), (b0, b1) in zip(s, s[1:]):
                if b0 < a1:
                    raise ValueError(f"{path}: device {k}'s intervals [{a0}, {a1}) and [{b0}, {b1}) overlap")
            a._starts[k] = [x for x, _ in s]
            a._ends[k] = [y for _, y in s]
        if not any(a._starts):
            raise ValueError(f"{path}: no interval for any device")
        return a

    # -- queries --
    def _extend(self, k: int, t: float) -> None:
        """Make sure device k's intervals are known up to time t (generated traces only)."""

    def _more(self, k: int) -> bool:
        """Generate device k's next on-interval; False when there is none (a fixed trace)."""
        return False

    def _index(self, k: int, t: float) -> int:
        """Index of the first interval whose end is after t."""
        self._extend(k, t)
        return bisect.bisect_right(self._ends[k], t)

    def is_on(self, k: int, t: float) -> bool:
        i = self._index(k, t)
        return i < len(self._starts[k]) and self._starts[k][i] <= t

    def next_on(self, k: int, t: float) -> float:
        """The earliest time >= t at which device k is on (inf: never again)."""
        i = self._index(k, t)
        if i >= len(self._starts[k]):
            return INF
        return max(t, self._starts[k][i])

    def finish(self, k: int, t: float, work_s: float) -> float:
        """When device k, starting at t, has been on for work_s seconds (inf: never)."""
        left = float(work_s)
        i = self._index(k, t)
        while True:
            if i >= len(self._starts[k]) and not self._more(k):
                return INF
            s0 = max(t, self._starts[k][i])
            e = self._ends[k][i]
            if s0 + left <= e:
                return s0 + left
            left -= e - s0
            i += 1

    def on_now(self, t: float) -> list[int]:
        return [k for k in range(self.n) if self.is_on(k, t)]

    def share_on(self, t0: float, t1: float, step: float = 1.0) -> float:
        """Mean share of devices on over [t0, t1), sampled every `step` seconds (for the report)."""
        ts = np.arange(t0, t1, step)
        return float(np.mean([len(self.on_now(float(t))) / self.n for t in ts])) if ts.size else math.nan


class _Markov(Availability):
    """Alternating exponential on/off periods, generated lazily per device."""

    def __init__(self, n: int, seed: int, on_mean: float, off_mean: float):
        super().__init__(n)
        self.on_mean, self.off_mean = on_mean, off_mean
        self._rng = [np.random.default_rng(derive_seed(seed, 0xA7A1, k)) for k in range(n)]
        self._horizon = [0.0] * n       # generated up to this time
        self._on_next = [bool(r.random() < on_mean / (on_mean + off_mean)) for r in self._rng]

    def _extend(self, k: int, t: float) -> None:
        while self._horizon[k] <= t:
            self._step(k)

    def _more(self, k: int) -> bool:
        n = len(self._starts[k])
        while len(self._starts[k]) == n:
            self._step(k)
        return True

    def _step(self, k: int) -> None:
        """One more period (on or off) of device k."""
        h, on = self._horizon[k], self._on_next[k]
        length = float(self._rng[k].exponential(self.on_mean if on else self.off_mean))
        if on:
            self._starts[k].append(h)
            self._ends[k].append(h + length)
        self._horizon[k] = h + length
        self._on_next[k] = not on
