"""`fedtiny aggregate --mode async`: asynchronous buffered aggregation (FedBuff) over UDP.

The synchronous aggregator (fedtiny/net/aggregator.py) keeps its transport, sessions, joins,
receive paths and checkpoints; this module replaces its rounds (docs/network.md "Asynchronous
mode"). It is driven by the aggregator through four hooks: an in-session HELLO, a frame of a
device's current session, the step loop, and the byte counters.

- Up to M (`--concurrency`) devices hold a task at once. A task is (device, tag): the device
  downloads the model of buffer `tag` (the model after tag - 1 server steps), trains on it and
  uploads. The frame header's round field carries the tag both ways: the OFFER, the model
  chunks, the RESULT (its weight n_k) and the update chunks of a task all name it, and the
  device's session accepts only frames of that tag (the replay guard's round), so an update
  says which version it was computed from without a new field. Training and rounding are
  seeded from (seed, tag, device) exactly as `fedtiny simulate --mode async` seeds them.
- Every accepted update goes into the open buffer (rounds.Server.open_buffer) the moment its
  last chunk arrives, weighted n_k * s(tau), tau = the open buffer's tag minus the update's;
  after K accepted updates the server takes its step, the model is evaluated and checkpointed
  (fedtiny.net.state: a restarted aggregator resumes after the last step; the updates of the
  unfinished buffer are lost and their devices, which rejoin, get new tasks), and the next
  buffer opens. The metrics row of each step lists its accepted updates in order,
  [device, tag, n_k, steps]: with the devices' data this replays the run bit for bit through
  the round logic (tests/test_async_net.py).
- An update more than `--max-staleness` server steps old is refused when its RESULT arrives
  (or, if a step happens during its upload, when it is complete): counted `too_stale`, the
  device is told (ERROR 107) and offered the current model; nothing of it reaches the model.
- A device that finishes a task gets a new one when the buffer has moved on since its last
  accepted update (one update per (device, tag), as the round logic takes it); otherwise it
  waits, told so. A device that restarts (a new session) or says HELLO mid-task gets its task
  again if its version is still held, else the current model. A task whose device is silent
  for `--round-timeout` seconds is dropped, freeing its place.

Memory (beside the synchronous aggregator's: weights, one accumulator, the mean buffer, the
optimizer state, the staging slots): the model versions still being downloaded. A version is
held as its float32 bytes while it is current and while a task of it has not sent its RESULT
and is at most max_staleness steps old: at most min(M, max_staleness + 1) + 1 copies of the
model (a device still downloading an older version is offered the current one when it next
asks for chunks: its update would be refused). Plus,
per task, a few numbers and at most one staging slot while it uploads (--slots >= M is checked).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .. import bounds, rounds
from . import download, ingest, session, state, wire
from .common import MODEL_WINDOW, PACE_BATCH

log = logging.getLogger("fedtiny.aggregate")

REOFFER_SECONDS = 0.5     # offer again to a device that has not asked for its model
WAIT_TELL_SECONDS = 1.0   # "waiting for the next model version" to an idle device, at most this often


@dataclass
class _Version:
    """A model version held for downloads: its bytes, its OFFER and its paced download."""

    tag: int
    model: bytes
    offer: bytes
    download: download.ModelDownload


@dataclass
class _Task:
    device: int
    tag: int
    offered: float
    last_seen: float
    asked: bool = False                # the device asked for model chunks
    upload: tuple | None = None        # (n_k, steps, loss, seed, flags) from its RESULT
    ingest: ingest.UpdateIngest | None = None


@dataclass
class _StepStats:
    started: float
    cpu_started: float = field(default_factory=time.process_time)
    bytes_up: int = 0
    bytes_down: int = 0
    arrivals: list = field(default_factory=list)     # [device, tag, n_k, steps] in the order accepted
    losses: list = field(default_factory=list)       # (n_k, train loss)
    too_stale: int = 0
    in_flight_max: int = 0
    versions_max: int = 0


def check_config(cfg) -> None:
    """The asynchronous flags of an AggregateConfig: one ValueError naming the flag and the fix."""
    given = [f"--{n.replace('_', '-')}" for n in ("buffer", "concurrency", "max_staleness", "staleness",
                                                   *rounds.STALENESS_PARAMS)
             if getattr(cfg, n) is not None]
    if cfg.mode not in ("sync", "async"):
        raise ValueError(f"--mode must be sync or async, got {cfg.mode!r}")
    if cfg.mode == "sync":
        if given:
            raise ValueError(f"{', '.join(given)} needs --mode async")
        return
    if getattr(cfg, "secagg", False):
        raise ValueError("--secagg needs synchronous rounds: use --mode sync (a masked sum needs every device on one model)")
    if getattr(cfg, "dp", "none") != "none":
        raise ValueError(f"--dp {cfg.dp} needs synchronous rounds (its accounting samples rounds): use --mode sync")
    if getattr(cfg, "down_codec", "float32") != "float32":
        raise ValueError(f"--down-codec {cfg.down_codec} needs --mode sync (asynchronous tasks download their model "
                         "version as float32)")
    k, m, s = buffer_of(cfg), concurrency_of(cfg), max_staleness_of(cfg)
    if k < 1:
        raise ValueError(f"--buffer must be >= 1 (updates per server step), got {k}")
    if m < 1:
        raise ValueError(f"--concurrency must be >= 1 (devices training at once), got {m}")
    if s < 0:
        raise ValueError(f"--max-staleness must be >= 0 server steps, got {s}")
    staleness_of(cfg)   # every bad kind, exponent or hinge value, named
    if cfg.slots and cfg.slots < m:
        raise ValueError(f"--slots {cfg.slots} is less than --concurrency {m}: each device training may need a "
                         f"staging slot; give --slots >= {m} or leave it out")


def buffer_of(cfg) -> int:
    return rounds.DEFAULT_BUFFER if cfg.buffer is None else int(cfg.buffer)


def concurrency_of(cfg) -> int:
    return rounds.DEFAULT_CONCURRENCY if cfg.concurrency is None else int(cfg.concurrency)


def max_staleness_of(cfg) -> int:
    return rounds.DEFAULT_MAX_STALENESS if cfg.max_staleness is None else int(cfg.max_staleness)


def staleness_of(cfg):
    """s(tau) of --staleness and its parameters (fedtiny.rounds.staleness_from_flags)."""
    return rounds.staleness_from_flags(cfg.staleness, **{k: getattr(cfg, k, None) for k in rounds.STALENESS_PARAMS})


class BufferedRounds:
    """The asynchronous rounds of one Aggregator (`agg`): tasks, held versions, the open buffer."""

    def __init__(self, agg, *, codec_flags: int, alive_seconds: float, ack_every: int):
        """agg: the Aggregator (its transport, devices, server, staging and counters); the
        offer's codec_flags, how long a silent device still counts as alive, ACK every n chunks."""
        cfg = agg.cfg
        self.agg = agg
        self.codec_flags, self.alive_seconds, self.ack_every = codec_flags, alive_seconds, ack_every
        self.K, self.M, self.S = buffer_of(cfg), concurrency_of(cfg), max_staleness_of(cfg)
        if agg.slots < self.M:
            raise ValueError(f"--staging-mb {cfg.staging_mb:g} holds {agg.slots} upload slots, fewer than "
                             f"--concurrency {self.M}: raise --staging-mb or lower --concurrency")
        self.sfn = staleness_of(cfg)
        self.versions: dict[int, _Version] = {}
        self.tasks: dict[int, _Task] = {}
        self.last_tag: dict[int, int] = {}     # device -> tag of its last accepted update
        self.idle_since: dict[int, float] = {}  # device -> when it last became idle (longest idle is offered first)
        self.told_wait: dict[int, float] = {}
        self.rnd: rounds.Round | None = None
        self.stats = _StepStats(time.monotonic())
        self.too_stale_total = 0

    # -- the aggregator's hooks ------------------------------------------------------------
    def count_up(self, nbytes: int) -> None:
        self.stats.bytes_up += nbytes

    def count_down(self, nbytes: int) -> None:
        self.stats.bytes_down += nbytes

    @property
    def tag(self) -> int:
        """The open buffer's tag: a device offered the model now trains version tag - 1."""
        return self.agg.server.round_id if self.rnd is not None else self.agg.server.round_id + 1

    def on_hello(self, dev, now: float) -> None:
        """An in-session HELLO: the device is idle (waiting, done, or just (re)joined)."""
        task = self.tasks.get(dev.id)
        if task is not None:
            if task.upload is None and (task.tag in self.versions or task.tag == self.tag):
                self._send_offer(dev, task, now)     # it lost the offer, or restarted mid-task: the same task
                return
            self._end_task(dev.id, now)              # it gave up on the task: a new one below
        if not self._try_offer(dev, now) and now - self.told_wait.get(dev.id, -math.inf) >= WAIT_TELL_SECONDS:
            self.told_wait[dev.id] = now
            # an answer, so that the device hears the aggregator is alive in this epoch
            self.agg._tell(dev, dev.session.round, session.E_NOT_SELECTED, "waiting for the next model version")

    def on_frame(self, dev, hdr: wire.Frame, now: float) -> None:
        """An authentic frame of the device's session, of the round its guard accepts (its task's tag)."""
        task = self.tasks.get(dev.id)
        if self.agg.finished:           # the last step is taken: uploads still coming are not needed
            self.agg._tell(dev, hdr.round, session.E_FINISHED, "training is finished")
            return
        if task is None or hdr.round != task.tag:
            self.agg._tell(dev, hdr.round, session.E_ROUND_CLOSED, f"no task of version {hdr.round} is open for you")
            raise session.Rejected("round_closed", f"no task of tag {hdr.round}")
        task.last_seen = now
        mtype, payload = hdr.type, hdr.payload
        if mtype == session.ACK:
            self._on_model_ack(dev, task, payload, now)
        elif mtype == session.RESULT:
            self._on_result(dev, task, wire.Result.unpack(payload), now)
        elif mtype == session.UPDATE_CHUNK:
            self._on_chunk(dev, task, hdr, payload, now)
        else:
            raise session.Rejected("unexpected_type", f"type {mtype} is not sent by devices")

    async def run_step(self, stop: asyncio.Event) -> bool:
        """Serve the remaining server steps (True once --rounds are done) or until stopped (False)."""
        agg = self.agg
        if self.rnd is None and agg.server.round_id < agg.cfg.rounds:
            self._open_buffer(time.monotonic())
        while not stop.is_set():
            now = time.monotonic()
            if self.rnd is None:
                return True
            self._housekeeping(now)
            self._pace(now)
            await agg.tick(downloading=any(v.download.active for v in self.versions.values()))
        return False

    # -- tasks -----------------------------------------------------------------------------
    def _open_buffer(self, now: float) -> None:
        self.rnd = self.agg.server.open_buffer(self.K, max_staleness=self.S, staleness_weight=self.sfn)
        self.stats = _StepStats(now)
        self.agg.round_rejected = Counter()
        self.agg.round_clipped = 0
        # A version more than max_staleness steps old is no longer held: a device still
        # downloading it is offered the current model when it next asks for chunks; one that
        # is training it is told its update is too stale when its RESULT comes.
        self._release_versions()
        for dev in self._idle(now):
            if not self._try_offer(dev, now):
                break

    def _offerable(self, dev, now: float) -> bool:
        return (dev.session is not None and not dev.excluded and dev.n_samples > 0 and dev.id not in self.tasks
                and now - dev.last_seen <= self.alive_seconds and self.last_tag.get(dev.id) != self.tag)

    def _idle(self, now: float) -> list:
        idle = [d for d in self.agg.devices.values() if self._offerable(d, now)]
        return sorted(idle, key=lambda d: (self.idle_since.get(d.id, -math.inf), d.id))

    def _try_offer(self, dev, now: float) -> bool:
        """Offer the current model to an idle device if fewer than M tasks are open."""
        if self.rnd is None or self.agg.finished or len(self.tasks) >= self.M or not self._offerable(dev, now):
            return False
        tag = self.tag
        task = self.tasks[dev.id] = _Task(dev.id, tag, now, now)
        self.stats.in_flight_max = max(self.stats.in_flight_max, len(self.tasks))
        dev.upload, dev.acked = None, 0
        self._send_offer(dev, task, now)
        return True

    def _send_offer(self, dev, task: _Task, now: float) -> None:
        version = self._version(task.tag)
        dev.session.new_round(task.tag)      # its frames are accepted for this tag only
        task.offered = now
        version.download.forget(dev.id)
        self.agg._send(dev, dev.session.seal(session.OFFER, task.tag, version.offer))

    def _version(self, tag: int) -> _Version:
        v = self.versions.get(tag)
        if v is None:
            if tag != self.tag:   # callers offer only held versions or the current one
                raise ValueError(f"model version {tag} is not held (current: {self.tag})")
            agg, cfg = self.agg, self.agg.cfg
            params = agg.server.params
            n = agg.server.n_params
            offer = wire.Offer(n_params=n, codec_flags=self.codec_flags, model_hash=wire.model_hash(params),
                               lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch,
                               deadline_ms=int(cfg.round_timeout * 1000), seed=cfg.seed, prox_mu=cfg.prox_mu,
                               arch_hash=agg.arch_hash, up_codec=agg.up_codec, down_codec=wire.CODEC_FLOAT32)
            dl = download.ModelDownload(wire.model_chunks(n), session.MODEL_CHUNK_BYTES + wire.HEADER_BYTES + wire.TAG_BYTES,
                                        window=MODEL_WINDOW, total_rate=cfg.send_rate * 1e6,
                                        device_rate=cfg.device_rate * 1e6)
            v = self.versions[tag] = _Version(tag, params.astype("<f4").tobytes(), offer.pack(), dl)
            self.stats.versions_max = max(self.stats.versions_max, len(self.versions))
        return v

    def _release_versions(self) -> None:
        """Keep a version while it is current or a task still downloading it is not too stale."""
        wanted = {self.tag} | {t.tag for t in self.tasks.values()
                               if t.upload is None and self.tag - t.tag <= self.S}
        for tag in [t for t in self.versions if t not in wanted]:
            del self.versions[tag]

    def _end_task(self, device_id: int, now: float, *, close_ingest: bool = True) -> None:
        task = self.tasks.pop(device_id, None)
        if task is None:
            return
        if close_ingest and task.ingest is not None and not task.ingest.closed:
            task.ingest.close()              # frees its staging slot (an incomplete upload touched nothing)
        v = self.versions.get(task.tag)
        if v is not None:
            v.download.forget(device_id)
        self.idle_since[device_id] = now
        self._release_versions()

    def _housekeeping(self, now: float) -> None:
        agg = self.agg
        for d, task in list(self.tasks.items()):
            dev = agg.devices[d]
            if dev.excluded or now - task.last_seen > agg.cfg.round_timeout:
                log.info("device %d: task of version %d dropped (%s)", d, task.tag,
                         "excluded" if dev.excluded else f"silent for {agg.cfg.round_timeout:g} s")
                self._end_task(d, now)
            elif not task.asked and task.upload is None and now - task.offered >= REOFFER_SECONDS:
                if task.tag in self.versions or task.tag == self.tag:
                    self._send_offer(dev, task, now)     # the offer was lost: again
                else:                                    # its version is too stale now: the current one
                    self._end_task(d, now)
                    self._try_offer(dev, now)
        for dev in self._idle(now):
            if not self._try_offer(dev, now):
                break

    # -- messages --------------------------------------------------------------------------
    def _on_model_ack(self, dev, task: _Task, payload: bytes, now: float) -> None:
        version = self.versions.get(task.tag)
        n_chunks = wire.model_chunks(self.agg.server.n_params)
        ack = wire.Ack.unpack(payload)
        if ack.acked_type != session.MODEL_CHUNK or ack.first != 0 or ack.n_bits != n_chunks:
            raise session.Rejected("bad_payload", "model ack does not cover the model's chunks")
        if version is None or task.upload is not None:    # no longer held (too stale): the current model
            self._end_task(dev.id, now)
            self._try_offer(dev, now)
            return
        task.asked = True
        received = np.zeros(n_chunks, dtype=bool)
        received[list(ack.received)] = True
        version.download.ack(dev.id, received, now)
        self._pace(now)

    def _pace(self, now: float) -> None:
        agg = self.agg
        size = session.MODEL_CHUNK_BYTES
        if agg.transport is None or agg.transport.get_write_buffer_size() != 0:
            return
        for v in list(self.versions.values()):
            n = len(v.model) // 4
            count = wire.model_chunks(n)
            for d, i in v.download.next_sends(now, limit=PACE_BATCH):
                dev = agg.devices[d]
                task = self.tasks.get(d)
                if task is None or task.tag != v.tag:
                    v.download.forget(d)
                    continue
                agg._send(dev, dev.session.seal(session.MODEL_CHUNK, v.tag, v.model[i * size:(i + 1) * size],
                                                chunk_index=i, chunk_count=count))

    def _too_stale(self, dev, task: _Task, now: float, *, committing: bool = False) -> None:
        tau = self.tag - task.tag
        detail = (f"device {dev.id}: its update from version {task.tag} is {tau} server steps old, more than "
                  f"--max-staleness {self.S}")
        self.stats.too_stale += 1
        self.too_stale_total += 1
        self.agg._reject(rounds.TOO_STALE, f"device {dev.id}", detail)
        self.agg._tell(dev, task.tag, session.E_TOO_STALE, detail + ": take the current model", always=True)
        self._end_task(dev.id, now, close_ingest=not committing)   # committing: the ingest frees the slot itself
        self._try_offer(dev, now)

    def _on_result(self, dev, task: _Task, res, now: float) -> None:
        n_chunks = wire.update_chunks(self.agg.server.n_params, self.agg.up_codec)
        if res.update_chunks != n_chunks:
            raise session.Rejected("bad_payload", f"announces {res.update_chunks} update chunks, the model needs {n_chunks}")
        if not (res.n_samples > 0 and math.isfinite(res.loss) and res.steps > 0):
            raise session.Rejected("bad_payload", "n_samples and steps must be positive, loss finite")
        if res.n_samples != dev.n_samples:
            raise session.Rejected("samples_mismatch", f"RESULT n_k {res.n_samples}, its HELLO announced {dev.n_samples}")
        if self.tag - task.tag > self.S:
            self._too_stale(dev, task, now)
            return
        upload = (int(res.n_samples), int(res.steps), float(res.loss), int(res.update_seed), int(res.update_flags))
        if task.upload is not None and task.upload[:2] != upload[:2]:
            raise session.Rejected("weight_changed", f"n_k {task.upload[0]} -> {upload[0]} within one task")
        task.upload = dev.upload = upload
        if task.ingest is None:
            task.ingest = ingest.UpdateIngest(self.agg.server.n_params, self._commit_for(task),
                                              upload_seconds=self.agg.upload_seconds, staging=self.agg.staging)
            self._release_versions()
            v = self.versions.get(task.tag)
            if v is not None:
                v.download.forget(dev.id)
        try:
            slot = task.ingest.reserve(dev.id, float(upload[0]), now, flags=upload[4], seed=upload[3])
        except ValueError as exc:
            raise session.Rejected(str(exc)) from None
        if slot:
            self._ack_update(dev, task)
        else:
            self.agg._tell(dev, task.tag, session.E_BUSY, "every upload slot is taken: retry")

    def _on_chunk(self, dev, task: _Task, hdr, payload: bytes, now: float) -> None:
        if task.upload is None or task.ingest is None:
            raise session.Rejected("no_result", "update chunk before the device's RESULT (its weight)")
        if hdr.chunk_count != task.ingest.n_chunks:
            raise session.Rejected("bad_chunk", f"chunk count {hdr.chunk_count}, the model has {task.ingest.n_chunks}")
        try:
            outcome = task.ingest.add_chunk(dev.id, float(task.upload[0]), hdr.chunk_index, payload, now,
                                            flags=task.upload[4], seed=task.upload[3])
        except ValueError as exc:
            raise session.Rejected(str(exc), f"update chunk {hdr.chunk_index}") from None
        if outcome == "busy":
            self.agg.round_rejected["busy"] += 1
            self.agg.rejected["busy"] += 1
            return
        if outcome == "duplicate":
            self.agg.round_rejected["duplicate_chunk"] += 1
            self.agg.rejected["duplicate_chunk"] += 1
        dev.acked += 1
        if outcome == "complete":
            self._ack_update(dev, task)
            task.ingest.flush()               # commits it now: the buffer sees updates in arrival order
        elif dev.acked >= self.ack_every:
            self._ack_update(dev, task)

    def _ack_update(self, dev, task: _Task) -> None:
        dev.acked = 0
        ack = wire.Ack.pack_flags(session.UPDATE_CHUNK, task.ingest.received(dev.id))
        self.agg._send(dev, dev.session.seal(session.ACK, task.tag, ack))

    def _commit_for(self, task: _Task):
        def commit(device_id: int, update, weight: float) -> None:
            self._commit(task, update, weight)
        return commit

    def _commit(self, task: _Task, update, weight: float) -> None:
        """A complete update: into the open buffer now (or refused); the device is idle after it."""
        agg, now = self.agg, time.monotonic()
        dev = agg.devices[task.device]
        if self.tasks.get(task.device) is not task:
            return
        if self.tag - task.tag > self.S:      # a step happened while it uploaded
            self._too_stale(dev, task, now, committing=True)
            return
        verdict = self.rnd.submit(task.device, task.tag, update, weight, steps=task.upload[1])
        self.tasks.pop(task.device, None)     # its slot is released by the ingest after this call
        self.idle_since[task.device] = now
        if not verdict.accepted:
            agg._reject(verdict.reason, f"device {task.device}", verdict.detail)
            agg._tell(dev, task.tag, session.E_REJECTED, verdict.detail or verdict.reason, always=True)
        else:
            if verdict.detail.startswith(bounds.CLIPPED):
                agg._count_clipped(verdict.detail)
            self.last_tag[task.device] = task.tag
            self.stats.arrivals.append([task.device, task.tag, int(weight), int(task.upload[1])])
            self.stats.losses.append((task.upload[0], task.upload[2]))
            if self.rnd.should_close():
                self._step(now)
        self._release_versions()
        self._try_offer(dev, now)

    # -- the server step -------------------------------------------------------------------
    def _step(self, now: float) -> None:
        agg, rnd, st = self.agg, self.rnd, self.stats
        result = agg.server.close_round(now)
        self.rnd = None
        n = sum(w for w, _ in st.losses)
        taus = [rnd.round_id - tag for _, tag, _, _ in st.arrivals]
        row = {"round": rnd.round_id, "clients": len(st.arrivals), "selected": self.M,
               "samples": int(result.n_samples), "outcome": result.outcome, "closed_by": "buffer",
               "train_loss": sum(w * l for w, l in st.losses) / n if n else math.nan,
               "test_loss": math.nan, "test_acc": math.nan,
               "bytes_up": st.bytes_up, "bytes_down": st.bytes_down, "round_s": now - st.started,
               "cpu_s": time.process_time() - st.cpu_started,
               "staleness_mean": float(np.mean(taus)) if taus else 0.0, "staleness_max": max(taus, default=0),
               "rejected_stale": st.too_stale, "in_flight_max": st.in_flight_max,
               "versions_held_max": st.versions_max, "arrivals": st.arrivals,
               "rejected": dict(agg.round_rejected), "clipped": agg.round_clipped}
        if bounds.NONFINITE_STEP in result.rejected:
            # The model did not change and nothing is written: a restart redoes this step.
            agg.rejected[bounds.NONFINITE_STEP] += 1
            row["rejected"][bounds.NONFINITE_STEP] = 1
            log.warning("%s", result.detail)
            agg.metrics.append(row)
            agg._print_row(row)
        else:
            if agg.test is not None:
                row["test_loss"], row["test_acc"] = map(float, agg.train.evaluate(agg.model, agg.server.params,
                                                                                  *agg.test))
            agg.metrics.append(row)
            optimizer_state = {**agg.server.optimizer.state(), **agg.download.state()}
            state.save(agg.cfg.state, state.Checkpoint(agg.server.round_id, agg.server.params, optimizer_state, agg.metrics,
                                                       {"model": agg.cfg.model, "seed": agg.cfg.seed, "mode": "async",
                                                        "buffer": self.K, "max_staleness": self.S}))
            agg._print_row(row)
        agg._wake.set()
        if agg.server.round_id < agg.cfg.rounds:
            self._open_buffer(now)
        else:
            agg.finished = True
            for d in list(self.tasks):
                self._end_task(d, now)


__all__ = ["BufferedRounds", "check_config"]
