"""`fedtiny simulate`: a federation of K clients in one process on a real dataset.

It drives the same code as the real aggregator: fedtiny.rounds (sampling, admission, FedAvg
through fedtiny.fedavg.Accumulator, server optimizer), fedtiny.codec for the int8 updates and
fedtiny.train for local SGD. Only the transport is missing: an update goes from the client loop
to Round.submit as a Python object instead of UDP chunks.

Client-side state (the error-feedback residuals of int8-ef, one float32 vector per client that
has trained) lives in the simulated clients, not in the aggregator: on real devices it is device
memory. The aggregator's memory is Server.nbytes plus a few bytes per participant of a round.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from . import bounds, broadcast, clock, codec, datasets, rounds
from .atomic import atomic_write, remove_stale
from . import model as model_mod
from .datasets import check_model_fits
from .seeds import derive_seed  # noqa: F401  (public here since before fedtiny.seeds)

# <format>[-stochastic|-ef]: int8 (fedtiny.codec), int4 / int2 / 1bit-rot (sub-byte, docs/PROTOCOL.md)
CODECS = ("float32", "int8", "int8-stochastic", "int8-ef", "int4", "int4-stochastic", "int4-ef",
          "int2", "int2-stochastic", "int2-ef", "1bit-rot", "1bit-rot-ef")
DROPOUT_PHASES = ("keys", "shares", "masked", "unmask", "any")  # secagg.PHASES, or one of them at random
WEIGHTS = ("float32", "int8")
HETERO_MIN_SPEED = 0.1  # the slowest simulated device does 10% of the full local steps
SECAGG_DEFAULT_CLIP = 2.0   # the grid's L2 bound under --secagg when --clip-norm is not given (docs/secagg.md)
MODES = ("sync", "async")
AVAILABILITY = ("always", "markov")
SPEED_BY = ("random", "label")


@dataclass
class SimConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "2nn"
    clients: int = 100
    fraction: float = 0.1
    rounds: int = 50
    epochs: int = 1
    batch: int = 10
    lr: float = 0.05
    momentum: float = 0.0
    partition: str = "iid"
    alpha: float = 0.5
    iid_share: float = 0.0              # shards/dirichlet: this share of the data dealt IID first
    shards: int = 2
    holdout: float = 0.1
    codec: str = "float32"
    down_codec: str = "float32"
    weights: str = "float32"
    prox_mu: float = 0.0
    server_opt: str = "fedavg"
    server_lr: float | None = None
    server_momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    hetero: bool = False
    normalize: str = "none"
    personalize: int = 0
    personalize_clients: int = 100
    eval_every: int = 1
    test_limit: int | None = None
    trace_memory: bool = False
    init: str = "fedtiny"
    seed: int = 0
    # differential privacy (docs/privacy.md)
    dp: str = "none"                  # with --dp, --clip-norm is the DP clip bound C
    adaptive_clip: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    dp_sampling: str | None = None
    dp_bits: int | None = None
    dp_test_seed: int | None = None  # tests only: a reproducible noise stream (never a CLI flag)
    secagg: bool = False
    secagg_bits: int | None = None
    secagg_k: int | None = None
    secagg_t: int | None = None
    secagg_min_survivors: int | None = None
    dropout: float = 0.0
    dropout_phase: str = "masked"
    max_samples: int | None = None    # bounds of fedtiny.bounds (the aggregator's); None: off,
    clip_norm: float | None = None    # as a simulation has no adversary
    mode: str = "sync"
    buffer: int | None = None           # async: K, updates per server step (default rounds.DEFAULT_BUFFER)
    concurrency: int | None = None      # async: M, devices training at once (default rounds.DEFAULT_CONCURRENCY)
    max_staleness: int | None = None    # async: oldest accepted update, in server steps
    task_timeout: float | None = None   # async: a task not uploaded this many simulated s after it began is dropped
    staleness: str | None = None        # async: poly | const | hinge (default poly)
    staleness_exponent: float | None = None
    hinge_at: int | None = None
    hinge_slope: float | None = None
    deadline: float | None = None       # sync: simulated seconds a round waits; None: for every device
    speed_min: float = 1.0              # local steps per second of the slowest device
    speed_spread: float = 1.0           # fastest / slowest
    speed_by: str = "random"            # random: speeds drawn per device; label: in dominant-label order
    availability: str = "always"
    on_mean: float = 600.0
    off_mean: float = 300.0
    availability_csv: str | None = None

    def check(self) -> None:
        """Every bad value as one ValueError naming the option and what it takes."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)
        need(self.clients >= 1, f"--clients must be >= 1, got {self.clients}")
        need(0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}")
        need(self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.batch >= 1, f"--batch must be >= 1, got {self.batch}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        need(self.partition in datasets.PARTITIONS, f"--partition must be one of {', '.join(datasets.PARTITIONS)}, got {self.partition!r}")
        need(self.alpha > 0 and math.isfinite(self.alpha), f"--alpha must be positive, got {self.alpha}")
        need(math.isfinite(self.iid_share) and 0 <= self.iid_share <= 1,
             f"--iid-share must be a share in [0, 1], got {self.iid_share}")
        need(self.iid_share == 0 or self.partition != "iid", "--iid-share applies to --partition shards or dirichlet")
        need(self.shards >= 1, f"--shards must be >= 1, got {self.shards}")
        need(0 <= self.holdout < 1, f"--holdout must be in [0, 1), got {self.holdout}")
        need(self.codec in CODECS, f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        need(self.down_codec in broadcast.DOWN_CODECS,
             f"--down-codec must be one of {', '.join(broadcast.DOWN_CODECS)}, got {self.down_codec!r}")
        need(self.weights in WEIGHTS, f"--weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        need(self.prox_mu >= 0 and math.isfinite(self.prox_mu), f"--prox-mu must be >= 0, got {self.prox_mu}")
        need(self.server_opt in rounds.SERVER_OPTIMIZERS,
             f"--server-opt must be one of {', '.join(rounds.SERVER_OPTIMIZERS)}, got {self.server_opt!r}")
        need(self.normalize in ("none", "fednova"), f"--normalize must be none or fednova, got {self.normalize!r}")
        need(self.personalize >= 0, f"--personalize must be >= 0 epochs, got {self.personalize}")
        need(self.personalize_clients >= 1, f"--personalize-clients must be >= 1, got {self.personalize_clients}")
        need(self.init in model_mod.INIT_SCHEMES, f"--init must be one of {', '.join(model_mod.INIT_SCHEMES)}, got {self.init!r}")
        need(self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}")
        need(self.test_limit is None or self.test_limit >= 1, f"--test-limit must be >= 1, got {self.test_limit}")
        need(self.dp in ("none", "central", "distributed"), f"--dp must be none, central or distributed, got {self.dp!r}")
        if self.dp != "none":
            need(self.normalize == "none", "--dp weighs devices uniformly: drop --normalize fednova")
        need(self.dp != "distributed" or self.codec == "float32",
             "--dp distributed sends integers on the shared grid, not --codec: drop --codec")
        need(self.dp_sampling in (None, "poisson", "fixed"), f"--dp-sampling must be poisson or fixed, got {self.dp_sampling!r}")
        need(0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}")
        need(self.dp != "none" or (self.noise_multiplier is None and self.target_epsilon is None
                                   and self.adaptive_clip is None),
             "--noise-multiplier, --target-epsilon and --adaptive-clip need --dp central or distributed")
        need(not (self.secagg and self.dp != "none"),
             "--dp does not combine with --secagg in simulate yet (docs/privacy.md): drop one, or run "
             "fedtiny aggregate --secagg --dp distributed over the network")
        need(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        need(self.dropout_phase in DROPOUT_PHASES, f"--dropout-phase must be one of {', '.join(DROPOUT_PHASES)}, "
                                                   f"got {self.dropout_phase!r}")
        self.device_bounds()   # --max-samples / --clip-norm, named, before the modes that use them
        need(self.mode in MODES, f"--mode must be sync or async, got {self.mode!r}")
        need(self.availability in AVAILABILITY, f"--availability must be one of {', '.join(AVAILABILITY)}, "
                                                f"got {self.availability!r}")
        need(math.isfinite(self.speed_min) and self.speed_min > 0,
             f"--speed-min must be a positive number of local steps per second, got {self.speed_min}")
        need(math.isfinite(self.speed_spread) and self.speed_spread >= 1,
             f"--speed-spread must be >= 1 (fastest / slowest device), got {self.speed_spread}")
        need(self.speed_by in SPEED_BY, f"--speed-by must be one of {', '.join(SPEED_BY)}, got {self.speed_by!r}")
        for name in ("on_mean", "off_mean"):
            v = getattr(self, name)
            need(math.isfinite(v) and v > 0, f"--{name.replace('_', '-')} must be a positive number of seconds, got {v}")
        need(self.availability_csv is None or self.availability == "always",
             "--availability-csv replaces --availability markov: give one of them")
        async_only = [f"--{n.replace('_', '-')}" for n in ("buffer", "concurrency", "max_staleness", "task_timeout", "staleness",
                                                           "staleness_exponent", "hinge_at", "hinge_slope")
                      if getattr(self, n) is not None]
        if self.mode == "sync":
            need(not async_only, f"{', '.join(async_only)} needs --mode async")
            need(self.deadline is None or (math.isfinite(self.deadline) and self.deadline > 0),
                 f"--deadline must be a positive number of simulated seconds, got {self.deadline}")
        else:
            need(self.deadline is None, "--deadline applies to --mode sync: asynchronous buffers have no deadline")
            need(not self.secagg, "--secagg needs --mode sync: secure aggregation masks a synchronous round's sum")
            need(self.normalize == "none", "--normalize fednova needs --mode sync")
            need(self.down_codec == "float32", f"--down-codec {self.down_codec} needs --mode sync (the asynchronous "
                                               "buffer sends the model as float32 so far)")
            need(self.async_buffer() >= 1, f"--buffer must be >= 1, got {self.buffer}")
            need(1 <= self.async_concurrency() <= self.clients,
                 f"--concurrency must be in [1, --clients {self.clients}], got {self.concurrency}")
            need(self.async_max_staleness() >= 0, f"--max-staleness must be >= 0, got {self.max_staleness}")
            need(self.task_timeout is None or (math.isfinite(self.task_timeout) and self.task_timeout > 0),
                 f"--task-timeout must be a positive number of simulated seconds, got {self.task_timeout}")
            self.staleness_function()  # every bad kind, exponent or hinge value, named
        if self.dp != "none":  # the accountant's sampling: every sampled device must be there, on time
            need(self.mode == "sync", "--dp needs --mode sync")
            need(self.availability == "always" and self.availability_csv is None and self.deadline is None,
                 "--dp needs devices that are always available and no --deadline: its accounting assumes every "
                 "sampled device contributes")
        if self.secagg:
            need(self.codec == "float32", f"--codec {self.codec} does not apply with --secagg: the update is the "
                                          "round's shared grid (--clip-norm, --secagg-bits); leave --codec out")
            need(self.normalize == "none", "--normalize fednova needs per-device steps, which --secagg hides")
            need(self.secagg_bits in (None, 16, 32), f"--secagg-bits must be 16 or 32, got {self.secagg_bits}")
            self.secagg_config().for_round(rounds.n_sampled(self.clients, self.fraction))  # every bad k/t/min, named
        else:
            given = [f"--{n.replace('_', '-')}" for n in ("secagg_bits", "secagg_k", "secagg_t", "secagg_min_survivors")
                     if getattr(self, n) is not None] + (["--dropout"] if self.dropout else [])
            need(not given, f"{', '.join(given)} needs --secagg")

    def async_buffer(self) -> int:
        return rounds.DEFAULT_BUFFER if self.buffer is None else int(self.buffer)

    def async_concurrency(self) -> int:
        return min(rounds.DEFAULT_CONCURRENCY, self.clients) if self.concurrency is None else int(self.concurrency)

    def async_max_staleness(self) -> int:
        return rounds.DEFAULT_MAX_STALENESS if self.max_staleness is None else int(self.max_staleness)

    def staleness_function(self):
        return rounds.staleness_from_flags(self.staleness, **{k: getattr(self, k) for k in rounds.STALENESS_PARAMS})

    def fleet(self, dominant: np.ndarray | None = None) -> tuple[np.ndarray, clock.Availability]:
        """Each device's speed (local steps per second) and its availability trace.

        With --speed-by label, `dominant` (each device's dominant label) orders the speeds."""
        speeds = clock.device_speeds(self.clients, seed=self.seed, speed_min=self.speed_min, spread=self.speed_spread)
        if self.speed_by == "label":
            speeds = clock.speeds_by_key(speeds, dominant, seed=self.seed)
        if self.availability_csv is not None:
            avail = clock.Availability.from_csv(self.availability_csv, self.clients)
        elif self.availability == "markov":
            avail = clock.Availability.markov(self.clients, seed=self.seed, on_mean=self.on_mean, off_mean=self.off_mean)
        else:
            avail = clock.Availability.always(self.clients)
        return speeds, avail

    def secagg_config(self):
        from .privacy.secagg import Config
        return Config(clip=self.secagg_clip(), bits=self.secagg_bits, neighbours=self.secagg_k,
                      threshold=self.secagg_t, min_survivors=self.secagg_min_survivors)

    def secagg_clip(self) -> float:
        """The grid's L2 bound under --secagg: --clip-norm, else SECAGG_DEFAULT_CLIP."""
        return self.clip_norm if self.clip_norm is not None else SECAGG_DEFAULT_CLIP

    def device_bounds(self) -> bounds.Bounds:
        try:
            return bounds.Bounds(max_samples=self.max_samples, clip_norm=self.clip_norm or None)
        except ValueError as exc:
            raise ValueError(f"--max-samples / --clip-norm: {exc}") from None

    def server_optimizer(self) -> rounds.ServerOptimizer:
        applies = {"fedavg": {}, "fedavgm": {"server_momentum": "momentum"},
                   "fedadam": {"beta1": "beta1", "beta2": "beta2", "tau": "tau"}}[self.server_opt]
        unused = [f"--{n.replace('_', '-')}" for n in ("server_momentum", "beta1", "beta2", "tau")
                  if getattr(self, n) is not None and n not in applies]
        if unused:
            raise ValueError(f"{', '.join(unused)} does not apply to --server-opt {self.server_opt}")
        hyper = {"lr": self.server_lr, **{name: getattr(self, opt) for opt, name in applies.items()}}
        return rounds.make_server_optimizer(self.server_opt, **hyper)


@dataclass
class SimResult:
    config: dict
    rounds: list[dict] = field(default_factory=list)
    personalization: dict | None = None
    summary: dict = field(default_factory=dict)
    params: np.ndarray | None = field(default=None, repr=False)  # the final global weights

    def to_json(self) -> dict:
        return {"config": self.config, "summary": self.summary, "rounds": self.rounds,
                "personalization": self.personalization}


def _summarise(acc: np.ndarray) -> dict:
    if acc.size == 0:
        return {}
    q = np.percentile(acc, [10, 50, 90])
    return {"mean": float(acc.mean()), "std": float(acc.std()), "p10": float(q[0]), "median": float(q[1]),
            "p90": float(q[2]), "min": float(acc.min()), "max": float(acc.max())}


class Progress:
    """A one-line progress bar on a terminal; one plain line per round otherwise (logs)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, row: dict) -> None:
        if not self.enabled:
            return
        acc = row.get("test_acc")
        text = (f"round {row['round']}/{self.total}  test acc {acc:.4f}" if acc is not None and not math.isnan(acc)
                else f"round {row['round']}/{self.total}")
        elapsed = row["elapsed_wall_s"]
        rate = row["round"] / elapsed if elapsed > 0 else math.inf
        left = (self.total - row["round"]) / rate if rate > 0 else math.inf
        text += f"  up {row['cum_upload_mb']:.1f} MB  {elapsed:.1f} s  {rate:.2f} rounds/s  {left:.0f} s left"
        if row.get("secagg_detail"):
            text += f"  ({row['secagg_detail']})"
        if self.tty:
            width = 24
            filled = int(width * row["round"] / self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}   ")
            if row["round"] == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def run(cfg: SimConfig, *, progress: Progress | None = None, data: datasets.Dataset | None = None,
        attack: tuple[int, float] | None = None) -> SimResult:
    """Run the simulation described by cfg; returns every round's metrics (and writes nothing).

    attack=(device, factor): that device multiplies its update by factor (tests of bounded influence).
    """
    try:
        return _run(cfg, progress, data, attack)
    finally:
        if cfg.trace_memory and tracemalloc.is_tracing():
            tracemalloc.stop()


def _run(cfg: SimConfig, progress: Progress | None, data: datasets.Dataset | None,
         attack: tuple[int, float] | None = None) -> SimResult:
    from . import train

    cfg.check()
    # uint8 pixels stay uint8 (188 MB of float32 for Fashion-MNIST's training images): a client's
    # rows are converted when it trains, the test set a slice at a time (Dataset.floats)
    data = data if data is not None else datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.seed, pixels="uint8")
    model = model_mod.build(cfg.model)
    check_model_fits(model, data, cfg.model)
    splits = datasets.partition(data.y_train, cfg.clients, cfg.partition, alpha=cfg.alpha, iid_share=cfg.iid_share,
                                shards_per_client=cfg.shards, holdout=cfg.holdout, seed=cfg.seed)
    biggest = max(range(len(splits)), key=lambda k: splits[k].n_samples)
    if cfg.max_samples is not None and splits[biggest].n_samples > cfg.max_samples:
        raise ValueError(f"--max-samples {cfg.max_samples}: client {biggest} holds {splits[biggest].n_samples} "
                         f"training samples and would be refused every round; raise --max-samples or use more --clients")
    x_test, y_test = data.x_test, data.y_test
    if cfg.test_limit is not None:
        x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]

    if cfg.trace_memory:  # before the Server exists, so its accumulator and buffers are counted
        tracemalloc.start()
    priv = None
    if cfg.dp != "none":
        from .privacy.pipeline import PrivateRounds
        priv = PrivateRounds(cfg.dp, clients=cfg.clients, fraction=cfg.fraction, rounds_planned=cfg.rounds,
                             dim=model.n_params, clip_norm=cfg.clip_norm, adaptive_quantile=cfg.adaptive_clip,
                             noise_multiplier=cfg.noise_multiplier, target_epsilon=cfg.target_epsilon,
                             delta=cfg.delta, sampling=cfg.dp_sampling, bits=cfg.dp_bits, test_seed=cfg.dp_test_seed)
    # Under DP the clip bound (fixed or adaptive) is the DP pipeline's, enforced by the round logic
    # (central) or on the device (distributed); the round logic keeps the n_k cap.
    device_bounds = cfg.device_bounds() if priv is None else priv.round_bounds(cfg.max_samples)
    server = rounds.Server(model.init(cfg.seed, cfg.init), optimizer=cfg.server_optimizer(), normalization=cfg.normalize,
                           bounds=device_bounds, sum_stage=priv.stage if priv is not None else None)
    n_params = server.n_params
    upload_f32 = 4 * n_params
    speed = None
    if cfg.hetero:  # a fixed speed per device: the fraction of the full local steps it manages per round
        speed = np.random.default_rng(derive_seed(cfg.seed, 0x4E7E)).uniform(HETERO_MIN_SPEED, 1.0, cfg.clients)
    residuals: dict[int, np.ndarray] = {}  # int8-ef: CLIENT memory (one per device), not the aggregator's
    result = SimResult(config=asdict(cfg))
    cum_up = cum_down = 0
    agg_bytes_max = 0
    t_start = time.perf_counter()
    local = np.empty_like(server.params)
    speeds, avail = cfg.fleet(datasets.dominant_labels(data.y_train, splits) if cfg.speed_by == "label" else None)
    down_link = broadcast.Broadcaster(cfg.down_codec, n_params)  # --mode async: float32 only (check())
    if cfg.mode == "async":
        cum_up, cum_down, agg_bytes_max = _async_loop(cfg, train, model, data, splits, server, x_test, y_test, speed,
                                                      speeds, avail, residuals, result, progress, t_start)
    t_sim = 0.0  # simulated seconds (fedtiny.clock): rounds start when the last one closed
    for r in range(1, cfg.rounds + 1 if cfg.mode == "sync" else 1):
        t0, c0 = time.perf_counter(), time.process_time()
        start = down_link.publish(server.params)  # the model every device of this round starts from
        if priv is not None:  # DP's sampling is the accountant's: the clock does not change it (check())
            selected = priv.select(cfg.seed, r)
            priv.begin_round()
            server.bounds = priv.round_bounds(cfg.max_samples)  # adaptive clipping moves C between rounds
        else:
            selected, t_sim = _sync_select(cfg, avail, t_sim, r)
            if selected is None:
                if progress is not None:
                    progress.stream.write(f"round {r}: no device will be available again; stopping\n")
                break
        # when each selected device would finish (it trains only while on); the round closes at the
        # deadline or when the last one is in; the later ones are stragglers and do not train at all
        finish = {k: avail.finish(k, t_sim, _planned_steps(cfg, splits[k].n_samples, speed, k) / speeds[k])
                  for k in selected.tolist() if splits[k].n_samples > 0}
        close_at = t_sim + cfg.deadline if cfg.deadline is not None else math.inf
        t_close = min(close_at, max(finish.values(), default=t_sim))
        if math.isinf(t_close):
            raise ValueError(f"round {r}: a selected device never comes back and there is no --deadline: "
                             "give --deadline SECONDS")
        arrivals = sorted((f, k) for k, f in finish.items() if f <= t_close)
        rnd = (server.open_round(selected.tolist(), deadline=None if cfg.deadline is None else close_at)
               if selected.size else None)
        secure: dict = {}
        if cfg.secagg:
            up, down, train_loss, steps_total, secure = _secagg_round(cfg, train, model, data, splits, server, rnd,
                                                                      selected, local, r, start,
                                                                      down_link.message_bytes)
        else:
            up = 0
            down = down_link.message_bytes * len(finish)  # every selected device with data downloaded the model
            train_loss = 0.0
            steps_total = 0
            for _, k in arrivals:  # in order of arrival
                part = splits[k]
                xk, yk = data.floats(data.x_train[part.train]), data.y_train[part.train]
                local[:] = start  # download
                max_steps = None
                if speed is not None:
                    max_steps = _planned_steps(cfg, part.n_samples, speed, k)
                res = train.local_sgd(model, local, xk, yk, epochs=cfg.epochs, batch_size=cfg.batch, lr=cfg.lr,
                                      momentum=cfg.momentum, prox_mu=cfg.prox_mu,
                                      global_params=start if cfg.prox_mu > 0 else None,
                                      weights=cfg.weights, seed=derive_seed(cfg.seed, r, k, 1), max_steps=max_steps)
                local -= start  # the delta against the model the device started from, in place
                if attack is not None and k == attack[0]:
                    local *= np.float32(attack[1])  # tests: one hostile device scales its update
                weight = part.n_samples
                if priv is not None and priv.mode == "distributed":
                    priv.device(local, derive_seed(cfg.seed, r, 0xDD6))  # clip, grid, noise: on the device
                    up += priv.upload_bytes()
                    train_loss += res.loss * part.n_samples
                    steps_total += res.steps
                    continue
                update = _encode(cfg.codec, local, residuals, k, derive_seed(cfg.seed, r, k, 2))
                up += upload_f32 if update is local else update.nbytes
                if priv is not None:  # the round logic clips it to the DP bound; under DP every device weighs 1
                    weight = 1.0
                verdict = rnd.submit(k, r, update, weight, steps=res.steps)
                if not verdict.accepted:  # the simulation sends nothing malformed: this is a bug, say so loudly
                    raise RuntimeError(f"round {r}: update of client {k} refused: {verdict.reason} {verdict.detail}")
                train_loss += res.loss * part.n_samples
                steps_total += res.steps
        agg_bytes = _aggregator_bytes() if cfg.trace_memory else 0
        agg_bytes_max = max(agg_bytes_max, agg_bytes)
        n_devices = 0 if rnd is None else rnd.n_complete
        if priv is not None and priv.mode == "distributed" and rnd is not None:
            noisy_sum = priv.distributed_sum(derive_seed(cfg.seed, r, 0xDD6))
            if noisy_sum is not None:  # the modular sum decoded, as one partial aggregate of weight m
                rnd.submit_partial(int(selected[0]), r, noisy_sum / np.float32(priv.m), priv.m, priv.devices)
            n_devices = priv.devices
        outcome = server.close_round(now=t_close) if rnd is not None else None
        t_sim = t_close
        released = outcome is not None and outcome.outcome == "applied"
        dp_row = {}
        if priv is not None and priv.mode == "central":
            dp_row = priv.end_round(released, devices=n_devices,
                                    clipped=int(outcome.rejected.get(bounds.CLIPPED, 0)) if outcome is not None else 0)
        elif priv is not None:
            dp_row = priv.end_round(released)
        n_samples = outcome.n_samples if outcome is not None and (priv is None or priv.mode == "none") else 0
        if priv is not None and priv.mode != "none":
            n_samples = sum(splits[k].n_samples for k in selected.tolist())
        cum_up += up
        cum_down += down
        row = {"round": r, "sim_time_s": t_sim, "clients": n_devices, "samples": int(n_samples),
               "train_loss": train_loss / max(n_samples, 1), "local_steps": steps_total,
               "test_loss": math.nan, "test_acc": math.nan, "fed_loss": math.nan, "fed_acc": math.nan,
               "upload_bytes": up, "download_bytes": down, "cum_upload_mb": cum_up / 1e6,
               "cum_download_mb": cum_down / 1e6, "stragglers": 0 if outcome is None else len(outcome.stragglers),
               "staleness_mean": 0.0, "staleness_max": 0, "rejected_stale": 0, **dp_row}
        if cfg.clip_norm and priv is None:  # updates scaled down to --clip-norm by the round logic's bounds
            row["clipped"] = int(outcome.rejected.get(bounds.CLIPPED, 0)) if outcome is not None else 0
        if r % cfg.eval_every == 0 or r == cfg.rounds:
            row["test_loss"], row["test_acc"] = map(float, _evaluate(train, model, server.params, data, x_test, y_test))
            row["fed_loss"], row["fed_acc"] = _federated_eval(train, model, server.params, data, splits, selected)
        if cfg.trace_memory:
            row["aggregator_traced_bytes"] = agg_bytes
        row.update(secure)
        row["round_wall_s"] = time.perf_counter() - t0        # this round: train, aggregate, evaluate
        row["round_cpu_s"] = time.process_time() - c0         # this process's CPU seconds in the round
        row["elapsed_wall_s"] = time.perf_counter() - t_start  # since the first round began
        result.rounds.append(row)
        if progress is not None:
            progress.update(row)
    result.params = server.params
    if cfg.personalize > 0:
        result.personalization = _personalize(cfg, train, model, server.params, data, splits)
    last = result.rounds[-1]
    result.summary = {
        "n_params": n_params, "final_test_acc": last["test_acc"], "final_fed_acc": last["fed_acc"],
        "best_test_acc": float(np.nanmax([row["test_acc"] for row in result.rounds])),
        "upload_mb": cum_up / 1e6, "download_mb": cum_down / 1e6,
        "upload_bytes_per_update": cum_up / max(1, sum(row["clients"] for row in result.rounds)),
        "aggregator_state_bytes": server.nbytes, "wall_s": last["elapsed_wall_s"],
        "cpu_s": sum(row["round_cpu_s"] for row in result.rounds),
        "client_residual_bytes": sum(int(v.nbytes) for v in residuals.values()),
        "download_bytes_per_device": down_link.message_bytes,
    }
    if cfg.down_codec != "float32":  # the model devices would start from next: what they run
        device_copy = down_link.publish(server.params)
        result.summary["final_device_test_acc"] = float(_evaluate(train, model, device_copy, data, x_test, y_test)[1])
    if cfg.trace_memory:
        result.summary["aggregator_traced_bytes_max"] = agg_bytes_max
    if priv is not None:
        result.summary.update(priv.summary())
    for target in (0.80, 0.85, 0.90):
        hit = next((row for row in result.rounds if row["test_acc"] >= target), None)
        result.summary[f"rounds_to_{int(target * 100)}"] = None if hit is None else hit["round"]
        result.summary[f"sim_time_to_{int(target * 100)}"] = None if hit is None else hit["sim_time_s"]
    result.summary["sim_time_s"] = last["sim_time_s"]
    return result


def _planned_steps(cfg: SimConfig, n_samples: int, hetero, k: int) -> int:
    """Local SGD steps device k runs: E * ceil(n_k / B), or its --hetero share of them."""
    full = cfg.epochs * math.ceil(n_samples / cfg.batch)
    return full if hetero is None else max(1, int(round(hetero[k] * full)))


def _sync_select(cfg: SimConfig, avail: clock.Availability, t: float, r: int):
    """Round r's devices, drawn from those available at t (waiting until one is); None if none ever is again.

    m = max(C K, 1) of the whole fleet, or every available device when fewer are on. Always-on
    devices give exactly the draw of rounds.sample_clients(K, C) (the runs before the clock)."""
    if cfg.availability == "always" and cfg.availability_csv is None:
        return rounds.sample_clients(cfg.clients, cfg.fraction, seed=cfg.seed, round_id=r), t
    on = avail.on_now(t)
    if not on:
        t = min(avail.next_on(k, t) for k in range(cfg.clients))
        if math.isinf(t):
            return None, t
        on = avail.on_now(t)
    m = min(len(on), rounds.n_sampled(cfg.clients, cfg.fraction))
    return rounds.sample_clients(on, m / len(on), seed=cfg.seed, round_id=r, minimum=m), t


def _async_loop(cfg, train, model, data, splits, server, x_test, y_test, hetero, speeds, avail, residuals, result,
                progress, t_start):
    """FedBuff on the simulated clock: M devices train at once, each from the model current when it
    started; the server steps after every K accepted arrivals (rounds.Server.open_buffer).

    Events in time order: a task finishes (its update is submitted, tagged with the buffer that
    was open when it started), or an idle device comes on. A device that finishes picks up a new
    task at once if it is on and the buffer has moved on since its last start (one task per
    (device, buffer): the round logic takes one update per (device, tag)). Which idle device
    gets a free slot is a seeded draw. In-flight updates are device memory, not the aggregator's.
    With --task-timeout T a task not uploaded T simulated seconds after it started is dropped at
    that time (as `fedtiny aggregate --round-timeout` drops a silent task): its slot is free, its
    update never reaches the server, and its device is idle again."""
    import heapq

    K, M, S = cfg.async_buffer(), cfg.async_concurrency(), cfg.async_max_staleness()
    T = cfg.task_timeout
    sfn = cfg.staleness_function()
    rng = np.random.default_rng(derive_seed(cfg.seed, 0xA5C))
    n_params = server.n_params
    upload_f32 = 4 * n_params
    local = np.empty_like(server.params)
    flight: list = []               # heap of (finish time, seq, device, tag, update, n_k, steps, loss)
    busy: set[int] = set()
    last_tag = np.zeros(cfg.clients, np.int64)   # the buffer each device last started from
    has_data = [splits[k].n_samples > 0 for k in range(cfg.clients)]
    cum_up = cum_down = agg_bytes_max = 0
    seq = 0
    t = 0.0
    rnd = server.open_buffer(K, max_staleness=S, staleness_weight=sfn)
    step_stats = {"up": 0, "down": 0, "loss": 0.0, "steps": 0, "stale": 0, "t0": time.perf_counter(),
                  "c0": time.process_time(), "contributors": [], "timed_out": 0}

    def start_tasks(now: float) -> None:
        nonlocal seq
        while len(flight) < M:
            idle = [k for k in range(cfg.clients) if has_data[k] and k not in busy and last_tag[k] != rnd.round_id
                    and avail.is_on(k, now)]
            if not idle:
                return
            k = int(idle[rng.integers(len(idle))])
            part = splits[k]
            steps = _planned_steps(cfg, part.n_samples, hetero, k)
            done = avail.finish(k, now, steps / speeds[k])
            tag = rnd.round_id
            local[:] = server.params  # download (instantaneous)
            res = train.local_sgd(model, local, data.floats(data.x_train[part.train]), data.y_train[part.train], epochs=cfg.epochs,
                                  batch_size=cfg.batch, lr=cfg.lr, momentum=cfg.momentum, prox_mu=cfg.prox_mu,
                                  global_params=server.params if cfg.prox_mu > 0 else None, weights=cfg.weights,
                                  seed=derive_seed(cfg.seed, tag, k, 1),
                                  max_steps=None if hetero is None else steps)
            np.subtract(local, server.params, out=local)  # the delta
            update = _encode(cfg.codec, local, residuals, k, derive_seed(cfg.seed, tag, k, 2))
            if update is local:
                update = local.copy()  # the device keeps its delta until it uploads
            if T is not None and done > now + T:  # dropped at now + T: the update is never sent
                done, update = now + T, None
            heapq.heappush(flight, (done, seq, k, tag, update, part.n_samples, res.steps, res.loss))
            seq += 1
            busy.add(k)
            last_tag[k] = tag
            step_stats["down"] += upload_f32

    start_tasks(t)
    step = 0
    while step < cfg.rounds:
        t_wake = math.inf
        if len(flight) < M:  # an idle device coming on could take the free slot
            t_wake = min((avail.next_on(k, t) for k in range(cfg.clients)
                          if has_data[k] and k not in busy and not avail.is_on(k, t)), default=math.inf)
        t_next = flight[0][0] if flight else math.inf
        if math.isinf(t_wake) and math.isinf(t_next):
            if progress is not None:
                progress.stream.write(f"server step {step + 1}: no device will finish or come back; stopping\n")
            break
        if t_wake < t_next:
            t = t_wake
            start_tasks(t)
            continue
        t, _, k, tag, update, n_k, steps, loss = heapq.heappop(flight)
        busy.discard(k)
        if update is None:  # --task-timeout: the slot is free, nothing reaches the buffer
            step_stats["timed_out"] += 1
            start_tasks(t)
            continue
        verdict = rnd.submit(k, tag, update, n_k, steps=steps)
        if verdict.accepted:
            step_stats["up"] += upload_f32 if isinstance(update, np.ndarray) else update.nbytes
            step_stats["loss"] += loss * n_k
            step_stats["steps"] += steps
            step_stats["contributors"].append(k)
        elif verdict.reason == rounds.TOO_STALE:
            step_stats["up"] += upload_f32 if isinstance(update, np.ndarray) else update.nbytes  # it was sent
        else:
            raise RuntimeError(f"buffer {rnd.round_id}: update of client {k} refused: {verdict.reason} {verdict.detail}")
        if rnd.should_close():
            agg_bytes = _aggregator_bytes() if cfg.trace_memory else 0
            agg_bytes_max = max(agg_bytes_max, agg_bytes)
            outcome = server.close_round(now=t)
            step += 1
            cum_up += step_stats["up"]
            cum_down += step_stats["down"]
            row = {"round": step, "sim_time_s": t, "clients": len(outcome.contributors),
                   "samples": int(outcome.n_samples), "train_loss": step_stats["loss"] / max(outcome.n_samples, 1),
                   "local_steps": step_stats["steps"], "test_loss": math.nan, "test_acc": math.nan,
                   "fed_loss": math.nan, "fed_acc": math.nan, "upload_bytes": step_stats["up"],
                   "download_bytes": step_stats["down"], "cum_upload_mb": cum_up / 1e6,
                   "cum_download_mb": cum_down / 1e6, "stragglers": 0,
                   "staleness_mean": rnd.staleness_sum / max(rnd.n_complete, 1), "staleness_max": rnd.staleness_max,
                   "rejected_stale": rnd.counts.get(rounds.TOO_STALE, 0)}
            if cfg.clip_norm:  # as in the synchronous rows
                row["clipped"] = int(outcome.rejected.get(bounds.CLIPPED, 0))
            if T is not None:
                row["timed_out"] = step_stats["timed_out"]
            if step % cfg.eval_every == 0 or step == cfg.rounds:
                row["test_loss"], row["test_acc"] = map(float, _evaluate(train, model, server.params, data, x_test, y_test))
                row["fed_loss"], row["fed_acc"] = _federated_eval(train, model, server.params, data, splits,
                                                                  np.unique(step_stats["contributors"]))
            if cfg.trace_memory:
                row["aggregator_traced_bytes"] = agg_bytes
            row["round_wall_s"] = time.perf_counter() - step_stats["t0"]
            row["round_cpu_s"] = time.process_time() - step_stats["c0"]
            row["elapsed_wall_s"] = time.perf_counter() - t_start
            result.rounds.append(row)
            if progress is not None:
                progress.update(row)
            rnd = server.open_buffer(K, max_staleness=S, staleness_weight=sfn)
            step_stats = {"up": 0, "down": 0, "loss": 0.0, "steps": 0, "stale": 0, "t0": time.perf_counter(),
                          "c0": time.process_time(), "contributors": [], "timed_out": 0}
        start_tasks(t)
    if not result.rounds:
        raise ValueError("no server step happened: no device was ever available (check the availability trace)")
    return cum_up, cum_down, agg_bytes_max


def _secagg_round(cfg, train, model, data, splits, server, rnd, selected, local, r, start, down_bytes):
    """One round under SecAgg+ (fedtiny.privacy): every selected device with data runs the protocol
    in this process; --dropout P of them go silent at --dropout-phase. Returns the round's
    upload bytes, download bytes, summed train loss, local steps and the secure round's outcome."""
    from .privacy import grid as gridmod
    from .privacy import inprocess, secagg

    members = [k for k in selected.tolist() if splits[k].n_samples > 0]
    setup = secagg.Setup.create(r, members, cfg.secagg_config())
    sround = secagg.ServerRound(setup, server.n_params)
    drop: dict[int, str] = {}
    if cfg.dropout > 0:
        rng = np.random.default_rng(derive_seed(cfg.seed, r, 0xD809))
        gone = rng.random(len(members)) < cfg.dropout
        phases = rng.choice(secagg.PHASES, size=len(members))
        drop = {k: (str(phases[i]) if cfg.dropout_phase == "any" else cfg.dropout_phase)
                for i, k in enumerate(members) if gone[i]}
    trained = {"loss": 0.0, "n": 0, "steps": 0}

    def make_update(device: secagg.Device) -> secagg.MaskedUpdate:
        k, part = device.id, splits[device.id]
        local[:] = start  # download (the compressed download composes with SecAgg: only uploads are masked)
        res = train.local_sgd(model, local, data.floats(data.x_train[part.train]), data.y_train[part.train], epochs=cfg.epochs,
                              batch_size=cfg.batch, lr=cfg.lr, momentum=cfg.momentum, prox_mu=cfg.prox_mu,
                              global_params=start if cfg.prox_mu > 0 else None, weights=cfg.weights,
                              seed=derive_seed(cfg.seed, r, k, 1))
        np.subtract(local, start, out=local)  # the delta, in place
        trained["loss"] += res.loss * part.n_samples
        trained["n"] += part.n_samples
        trained["steps"] += res.steps
        return device.masked_update(local, gridmod.derived_round_key(cfg.seed, r, k))

    aborts: Counter = Counter()
    result = inprocess.run_round(sround, {k: secagg.Device(k) for k in members}, make_update, drop, aborts)
    if result.outcome == "applied":
        verdict = rnd.submit_secure_mean(result.survivors, r, result.sum.mean(len(result.survivors)))
        if not verdict.accepted:
            raise RuntimeError(f"round {r}: secure mean refused: {verdict.reason} {verdict.detail}")
    info = {"secagg_outcome": result.outcome, "secagg_reason": result.reason, "dropped": len(drop),
            "survivors": len(result.survivors), "secagg_detail": result.detail}
    loss = trained["loss"] / max(trained["n"], 1) * len(result.survivors)  # the loop divides by the contributors
    return sround.bytes_received, down_bytes * len(members), loss, trained["steps"], info


def _encode(name: str, delta: np.ndarray, residuals: dict[int, np.ndarray], client: int, seed: int):
    if name == "float32":
        return delta
    fmt, _, mode = name.partition("-")
    if name.startswith("1bit-rot"):
        fmt, mode = "1bit-rot", name[len("1bit-rot-"):]
    residual = None
    if mode == "ef":
        residual = residuals.get(client)
        if residual is None:
            residual = residuals[client] = np.zeros_like(delta)
    rounding = "stochastic" if mode == "stochastic" else "nearest"
    if fmt == "int8":
        return codec.encode(delta, rounding=rounding, seed=seed, residual=residual)
    # the seed goes in the header: the rotated codec's signs are drawn afresh for every update
    return codec.encode_lowbit(delta, fmt, rounding=rounding, seed=seed, residual=residual)


_AGGREGATOR_FILES = (os.path.join("fedtiny", "rounds.py"), os.path.join("fedtiny", "fedavg.py"))


def _aggregator_bytes() -> int:
    """Bytes still held by allocations made in the aggregator's code (rounds.py, fedavg.py), traced."""
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*" + os.sep + f) for f in _AGGREGATOR_FILES])
    return sum(stat.size for stat in snap.statistics("filename"))


EVAL_ROWS = 64 * model_mod.PREDICT_BATCH   # test images converted to float32 at a time (6.4 MB for 28x28)


def _evaluate(train, model, params, data: datasets.Dataset, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """train.evaluate on test images that may be kept as pixels: converted EVAL_ROWS at a time, a
    multiple of the predict batch, so every logit is the one a whole float32 array gives."""
    if data.pixel_max is None or len(x) == 0:
        return train.evaluate(model, params, data.floats(x), y)
    logits = np.concatenate([model.predict(params, data.floats(x[i:i + EVAL_ROWS]))
                             for i in range(0, len(x), EVAL_ROWS)])
    return train.loss_and_accuracy(model, logits, y)


def _federated_eval(train, model, params, data, splits, selected) -> tuple[float, float]:
    """Weighted mean of each sampled client's loss and accuracy on its own held-out part."""
    total = loss = acc = 0.0
    for k in selected.tolist():
        hold = splits[k].holdout
        if hold.size == 0:
            continue
        lk, ak = train.evaluate(model, params, data.floats(data.x_train[hold]), data.y_train[hold])
        total += hold.size
        loss += float(lk) * hold.size
        acc += float(ak) * hold.size
    return (loss / total, acc / total) if total else (math.nan, math.nan)


def _personalize(cfg, train, model, global_params, data, splits) -> dict:
    """Each client fine-tunes the global model on its own data; accuracy on its held-out part before/after."""
    rng = np.random.default_rng(derive_seed(cfg.seed, 0x9E25))
    eligible = [k for k, s in enumerate(splits) if s.holdout.size and s.n_samples]
    if not eligible:
        raise ValueError("personalization needs held-out data on the clients: use --holdout > 0")
    chosen = sorted(rng.choice(eligible, size=min(cfg.personalize_clients, len(eligible)), replace=False).tolist())
    before, after = [], []
    params = np.empty_like(global_params)
    for k in chosen:
        s = splits[k]
        xh, yh = data.floats(data.x_train[s.holdout]), data.y_train[s.holdout]
        before.append(float(train.evaluate(model, global_params, xh, yh)[1]))
        params[:] = global_params
        train.local_sgd(model, params, data.floats(data.x_train[s.train]), data.y_train[s.train], epochs=cfg.personalize,
                        batch_size=cfg.batch, lr=cfg.lr, momentum=cfg.momentum, weights=cfg.weights,
                        seed=derive_seed(cfg.seed, 0x9E25, k))
        after.append(float(train.evaluate(model, params, xh, yh)[1]))
    b, a = np.array(before), np.array(after)
    return {"epochs": cfg.personalize, "clients": chosen, "before": before, "after": after,
            "before_summary": _summarise(b), "after_summary": _summarise(a),
            "improved_fraction": float(np.mean(a > b))}


# --- output -----------------------------------------------------------------------------------

OUTPUT_FILES = ("rounds.csv", "result.json", "params.npy", "personalization.csv", "accuracy.png")
CSV_FIELDS = ("round", "sim_time_s", "clients", "samples", "train_loss", "local_steps", "test_loss", "test_acc", "fed_loss",
              "fed_acc", "upload_bytes", "download_bytes", "cum_upload_mb", "cum_download_mb", "round_wall_s",
              "round_cpu_s", "elapsed_wall_s")


def write_outputs(result: SimResult, out: str, *, log=print) -> list[str]:
    """rounds.csv, result.json, params.npy (final weights), personalization.csv (if any) and accuracy.png (if matplotlib is there).

    Each file is written atomically (fedtiny.atomic): a kill leaves the previous file or the new
    one, and a temporary left by a SIGKILL of an earlier run is removed first."""
    os.makedirs(out, exist_ok=True)
    remove_stale(out, OUTPUT_FILES)
    written = []

    def put(name: str, data: bytes) -> None:
        path = os.path.join(out, name)
        atomic_write(path, data)
        written.append(path)

    text = io.StringIO(newline="")
    fields = list(CSV_FIELDS) + [k for k in result.rounds[0] if k not in CSV_FIELDS]
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    w.writerows(result.rounds)
    put("rounds.csv", text.getvalue().encode())
    put("result.json", json.dumps(_finite_or_null(result.to_json()), indent=1, default=_json_default,
                                  allow_nan=False).encode())
    if result.params is not None:
        buf = io.BytesIO()
        np.save(buf, result.params, allow_pickle=False)
        put("params.npy", buf.getvalue())
    if result.personalization:
        p = result.personalization
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["client", "acc_before", "acc_after"])
        w.writerows(zip(p["clients"], p["before"], p["after"]))
        put("personalization.csv", text.getvalue().encode())
    png = plot(result, os.path.join(out, "accuracy.png"), log=log)
    if png:
        written.append(png)
    return written


def _finite_or_null(o):
    """NaN / inf (not measured) as JSON null: bare NaN tokens are not JSON."""
    if isinstance(o, dict):
        return {k: _finite_or_null(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_null(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(o):
        return None
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def plot(result: SimResult, path: str, *, log=print) -> str | None:
    """Accuracy against round and against megabytes uploaded; skipped (one line) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install 'fedtiny[plot]'): skipping accuracy.png")
        return None
    rows = [r for r in result.rounds if not math.isnan(r["test_acc"])]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((a1, "round", "round"), (a2, "cum_upload_mb", "MB uploaded (all clients)")):
        ax.plot([r[key] for r in rows], [r["test_acc"] for r in rows], label="global test")
        ax.plot([r[key] for r in rows], [r["fed_acc"] for r in rows], label="federated (held-out)", alpha=0.7)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    a1.legend()
    c = result.config
    fig.suptitle(f"{c['dataset']} {c['model']} K={c['clients']} C={c['fraction']} {c['partition']} "
                 f"codec={c['codec']} {c['server_opt']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, buf.getvalue())
    plt.close(fig)
    return path


# --- command line -----------------------------------------------------------------------------

HELP = "simulate a federation of K clients in one process on a real dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SimConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="digits (bundled), fashion-mnist, mnist, emnist-<split>, or PATH.npz (default %(default)s)")
    g.add_argument("--data-dir", default=None, help="directory of the IDX files (default: the Debian package's)")
    g.add_argument("--partition", default=d.partition, choices=datasets.PARTITIONS)
    g.add_argument("--backbone", default=None, metavar="FILE.tflite",
                   help="federated transfer learning: a frozen .tflite feature extractor turns the images into "
                        "features and only a dense head (mlp:<features>-<classes>, replacing --model) is trained "
                        "and federated (needs the tflite extra)")
    g.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration (default %(default)s)")
    g.add_argument("--iid-share", type=float, default=d.iid_share, metavar="P",
                   help="shards/dirichlet: a share P of the data is dealt IID first, the rest by the scheme "
                        "(default %(default)s)")
    g.add_argument("--shards", type=int, default=d.shards, help="shards per client for --partition shards (default %(default)s)")
    g.add_argument("--holdout", type=float, default=d.holdout, help="fraction of each client's data kept for federated evaluation (default %(default)s)")
    g = p.add_argument_group("federation")
    g.add_argument("--model", default=d.model, help="2nn, cnn, mlp:A-B-...-K, seq:... or a float FILE.tflite (default %(default)s)")
    g.add_argument("--clients", type=int, default=d.clients, help="K (default %(default)s)")
    g.add_argument("--fraction", type=float, default=d.fraction, help="C, clients sampled per round (default %(default)s)")
    g.add_argument("--rounds", type=int, default=d.rounds)
    g.add_argument("--epochs", type=int, default=d.epochs, help="E, local epochs")
    g.add_argument("--batch", type=int, default=d.batch, help="B, local batch size")
    g.add_argument("--lr", type=float, default=d.lr, help="client learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="client SGD momentum")
    g.add_argument("--prox-mu", type=float, default=d.prox_mu, help="FedProx proximal term mu (0: off)")
    g.add_argument("--codec", default=d.codec, choices=CODECS, help="update encoding, the upload (default %(default)s)")
    g.add_argument("--down-codec", default=d.down_codec, choices=broadcast.DOWN_CODECS,
                   help="model encoding, the download: the whole model each round with error feedback on the "
                        "aggregator (default %(default)s)")
    g.add_argument("--weights", default=d.weights, choices=WEIGHTS, help="local SGD weights: float32, or int8 (quantized)")
    g.add_argument("--hetero", action="store_true", help="devices of different speed: each does a fixed fraction "
                   f"in [{HETERO_MIN_SPEED}, 1] of the local steps")
    g.add_argument("--normalize", default=d.normalize, choices=("none", "fednova"),
                   help="fednova: normalise updates by their local steps (for --hetero)")
    g.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="refuse a client's update whose n_k exceeds N, as the aggregator does (default: off)")
    g.add_argument("--clip-norm", type=float, default=None, metavar="C",
                   help="scale each update down to L2 norm <= C, as the aggregator does (default: off; "
                        f"the aggregator's default is {bounds.DEFAULT_CLIP_NORM}); with --secagg, the bound the round's "
                        f"grid covers, [-C, C] (default {SECAGG_DEFAULT_CLIP} there); with --dp, the DP clip bound "
                        "(required; with --adaptive-clip, the initial bound)")
    g = p.add_argument_group("clock, devices and asynchronous aggregation (docs/simulation.md)")
    g.add_argument("--mode", default=d.mode, choices=MODES,
                   help="sync: rounds of C*K devices (FedAvg); async: FedBuff, a server step every K arrivals")
    g.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="sync: a round closes this many simulated seconds after it opens, stragglers left out "
                        "(default: it waits for every selected device)")
    rounds.add_async_arguments(g, concurrency_default=f"{rounds.DEFAULT_CONCURRENCY}, or --clients if fewer")
    g.add_argument("--task-timeout", type=float, default=None, metavar="SECONDS",
                   help="async: a task not uploaded this many simulated seconds after it started is dropped and its "
                        "slot freed (a device gone off mid-task; default: none, it keeps its slot)")
    g.add_argument("--speed-min", type=float, default=d.speed_min,
                   help="local SGD steps per simulated second of the slowest device (default %(default)s)")
    g.add_argument("--speed-spread", type=float, default=d.speed_spread, metavar="R",
                   help="fastest / slowest device; speeds are log-uniform in [speed-min, R*speed-min], seeded "
                        "(default %(default)s: all equal)")
    g.add_argument("--speed-by", default=d.speed_by, choices=SPEED_BY,
                   help="random: each device's speed is its own draw; label: the same speeds handed out in the order "
                        "of each device's dominant label, so slow and fast devices see different data "
                        "(default %(default)s)")
    g.add_argument("--availability", default=d.availability, choices=AVAILABILITY,
                   help="always on, or markov: on/off periods of exponential length (--on-mean, --off-mean), seeded")
    g.add_argument("--on-mean", type=float, default=d.on_mean, metavar="SECONDS",
                   help="markov: mean on period (default %(default)s)")
    g.add_argument("--off-mean", type=float, default=d.off_mean, metavar="SECONDS",
                   help="markov: mean off period (default %(default)s)")
    g.add_argument("--availability-csv", default=None, metavar="FILE",
                   help="on-intervals device,start_s,end_s per line; a device with no line is never available")
    g = p.add_argument_group("server optimizer")
    g.add_argument("--server-opt", default=d.server_opt, choices=tuple(rounds.SERVER_OPTIMIZERS))
    g.add_argument("--server-lr", type=float, default=None, help="server learning rate (fedavg/fedavgm 1.0, fedadam 0.01)")
    g.add_argument("--server-momentum", type=float, default=None, help="fedavgm momentum (default 0.9)")
    g.add_argument("--beta1", type=float, default=None, help="fedadam beta1 (default 0.9)")
    g.add_argument("--beta2", type=float, default=None, help="fedadam beta2 (default 0.99)")
    g.add_argument("--tau", type=float, default=None, help="fedadam tau, adaptivity (default 1e-3)")
    g = p.add_argument_group("differential privacy (docs/privacy.md)")
    g.add_argument("--dp", default=d.dp, choices=("none", "central", "distributed"),
                   help="central: the aggregator adds Gaussian noise to the clipped sum (trusted aggregator); "
                        "distributed: each device adds discrete Gaussian noise on the shared integer grid "
                        "(for secure aggregation); none (default)")
    g.add_argument("--adaptive-clip", type=float, default=None, metavar="QUANTILE",
                   help="central DP: move the bound toward this quantile of update norms (Andrew et al. 2021), "
                        "starting at --clip-norm")
    g.add_argument("--noise-multiplier", type=float, default=None, metavar="Z", help="noise std / clip bound")
    g.add_argument("--target-epsilon", type=float, default=None, metavar="E",
                   help="calibrate Z up front so that epsilon after --rounds rounds is E")
    g.add_argument("--delta", type=float, default=d.delta, help="delta of (epsilon, delta)-DP (default %(default)s)")
    g.add_argument("--dp-sampling", default=None, choices=("poisson", "fixed"),
                   help="poisson (default under --dp: each device joins with probability --fraction) or fixed "
                        "(exactly fraction x clients, accounted with replace-one neighbours)")
    g.add_argument("--dp-bits", type=int, default=None, help="distributed: modulus 2^b of the integer sum (default: the smallest b within 5%% of central noise)")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--personalize", type=int, default=0, metavar="EPOCHS", help="after training, each client fine-tunes for EPOCHS and reports accuracy before/after")
    g.add_argument("--personalize-clients", type=int, default=d.personalize_clients, help="how many clients personalize (default %(default)s)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N rounds (default %(default)s)")
    g.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test samples only")
    g.add_argument("--trace-memory", action="store_true", help="trace the aggregator's allocations (slower)")
    g.add_argument("--init", default=d.init, choices=model_mod.INIT_SCHEMES,
                   help="initial weights: fedtiny's (He/Glorot-uniform, zero biases) or PyTorch's nn.Linear/nn.Conv2d "
                        "defaults, for like-for-like comparisons")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("secure aggregation (SecAgg+, docs/secagg.md)")
    g.add_argument("--secagg", action="store_true", help="the aggregator sees only the sum: every device clips, maps "
                   "its delta to the round's shared integer grid and masks it (replaces --codec)")
    g.add_argument("--secagg-bits", type=int, default=None, choices=(16, 32),
                   help="grid bits b (default 16 up to 127 devices per round, else 32)")
    g.add_argument("--secagg-k", type=int, default=None, help="neighbours per device (default: all up to 32 devices, "
                   "else the even number >= 6 log2 n)")
    g.add_argument("--secagg-t", type=int, default=None, help="Shamir threshold t (default floor(k/2) + 1)")
    g.add_argument("--secagg-min-survivors", type=int, default=None, help="abandon the round below this many "
                   "devices at any stage (default t + 1)")
    g.add_argument("--dropout", type=float, default=d.dropout, metavar="P",
                   help="share of each round's devices that vanish (with --secagg)")
    g.add_argument("--dropout-phase", default=d.dropout_phase, choices=DROPOUT_PHASES,
                   help="the stage at which they vanish: before their keys, their shares, their masked vector, "
                        "or the unmask answer; any: each at a random one (default %(default)s)")
    g.add_argument("--out", default=None, help="directory for rounds.csv, result.json and accuracy.png")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    fields = SimConfig.__dataclass_fields__
    return SimConfig(**{k: v for k, v in vars(args).items() if k in fields})


def run_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    cfg.check()
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    data = None
    if args.backbone is not None:
        from . import tflite
        data, cfg.model = tflite.backbone_dataset(args.backbone, datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.seed))
        print(f"backbone {args.backbone}: federating the head {cfg.model}")
    result = run(cfg, progress=Progress(cfg.rounds, enabled=not args.quiet), data=data)
    s = result.summary
    fed = "n/a (--holdout 0)" if math.isnan(s["final_fed_acc"]) else f"{s['final_fed_acc']:.4f}"
    print(f"final test accuracy {s['final_test_acc']:.4f} (best {s['best_test_acc']:.4f}), federated {fed}; "
          f"uploaded {s['upload_mb']:.2f} MB, downloaded {s['download_mb']:.2f} MB; "
          f"aggregator state {s['aggregator_state_bytes'] / 1e6:.2f} MB; {s['wall_s']:.1f} s "
          f"({s['sim_time_s']:.0f} simulated s)")
    if "epsilon" in s:
        print(f"differential privacy ({s['dp']}, {s['sampling']} sampling of {s['devices_per_round']} per round): "
              f"epsilon {s['epsilon']:.3f} at delta {s['delta']:g} after {len(result.rounds)} rounds; noise multiplier "
              f"{s['noise_multiplier']:.4f}, noise std per coordinate of the mean {s['noise_std_on_mean']:.3g}")
    if result.personalization:
        p = result.personalization
        b, a = p["before_summary"], p["after_summary"]
        print(f"personalization ({p['epochs']} epochs, {len(p['clients'])} clients): accuracy mean {b['mean']:.4f} -> "
              f"{a['mean']:.4f}, p10 {b['p10']:.4f} -> {a['p10']:.4f}, median {b['median']:.4f} -> {a['median']:.4f}, "
              f"p90 {b['p90']:.4f} -> {a['p90']:.4f}; improved on {p['improved_fraction']:.0%} of clients")
    if args.out is not None:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}")
    return 0
