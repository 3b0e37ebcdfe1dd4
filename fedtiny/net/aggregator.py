"""`fedtiny aggregate`: the FedAvg aggregator as an asyncio UDP server.

Per round (docs/network.md): wait for --min-clients registered devices, sample who takes part
(fedtiny.rounds, seeded by round), OFFER the round, serve the global model in chunks (each
device's ACK says what it still misses), take each device's RESULT (its weight n_k) and int8
update chunks into a staging slot (fedtiny.ingest), close at M complete updates or at the
deadline, commit the complete updates in device-id order through rounds.Round.submit, apply
the server step, evaluate, and write the checkpoint atomically (fedtiny.state). Restarted with
the same --state directory it resumes after the last finished round.

Devices join with a handshake (fedtiny.net.session): a join HELLO under the device's pre-shared
key, a WELCOME naming this run, this process life (epoch, persisted in --state before any frame
is sent or accepted) and a new session, then frames tagged with that session's key. A frame of
another run, an earlier life or an older session is refused as stale_run / stale_epoch /
stale_session. Every frame that fails a check (size, structure, key, session, replay, round,
payload) is dropped and counted by reason; the counts are in every metrics row and in the log.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .. import bounds, datasets, rounds
from ..privacy import aggregator_dp
from . import buffered, download, ingest, keys as keys_mod, rx as rx_mod, session, state, status, transfer, wire
from .common import MODEL_WINDOW, PACE_BATCH, PACE_SECONDS, parse_hostport, setup_logging
from .session import Rejected

log = logging.getLogger("fedtiny.aggregate")

CODECS = transfer.UPLOAD_CODECS   # --codec -> the offer's (upload codec, codec_flags) (docs/PROTOCOL.md)
ALIVE_SECONDS = 15.0      # a device silent for longer is not sampled
REOFFER_SECONDS = 0.5     # offer again to a selected device that has not asked for the model
ACK_EVERY = 16            # update chunks between two ACKs to the device
TELL_SECONDS = 0.25        # errors to one device, per code
RCVBUF_BYTES = 4 << 20    # requested UDP receive buffer
SNDBUF_BYTES = 1 << 20    # requested UDP send buffer (the pacer stops while it is full)
FRAME_OVERHEAD = wire.HEADER_BYTES + wire.TAG_BYTES   # bytes of a frame around its payload
UPLOAD_MIN_SECONDS = 5.0  # a device's upload deadline (from its slot's opening) is at least this
LOG_PER_REASON = 5        # rejections logged one by one per reason and round; then only counted
PENDING_SESSIONS = 4      # sessions offered to one device in WELCOMEs and not yet used
WELCOME_SECONDS = 0.05    # at most one WELCOME per device in this time (replayed join HELLOs cost one each)


@dataclass
class AggregateConfig:
    listen: str = "127.0.0.1:9000"
    model: str = "mlp:64-32-10"
    rounds: int = 10
    min_clients: int = 2
    fraction: float = 1.0
    round_timeout: float = 30.0
    keys: str = ""
    state: str = ""
    dataset: str | None = "digits"   # its test set evaluates the global model; None: no evaluation
    data_dir: str | None = None
    epochs: int = 1
    batch: int = 10
    lr: float = 0.05
    prox_mu: float = 0.0
    codec: str = "int8-stochastic"
    down_codec: str = "float32"      # the model download (fedtiny.net.transfer)
    server_opt: str = "fedavg"
    server_lr: float | None = None
    slots: int = 0                   # 0: sized by memory (--staging-mb)
    staging_mb: float = 32.0
    upload_seconds: float = 0.0      # 0: derived from the update size and --device-rate
    ingest: str = "c"                # the per-datagram path: "c" (fedtiny.net.rx) or "python" (the reference)
    send_rate: float = 100.0         # MB/s: the model download, all devices together
    device_rate: float = 12.5        # MB/s: the model download to one device
    seed: int = 0
    max_samples: int = bounds.DEFAULT_MAX_SAMPLES
    clip_norm: float = bounds.DEFAULT_CLIP_NORM      # 0: no clipping; under --dp the DP clip bound C
    mode: str = "sync"               # async: FedBuff (fedtiny/net/buffered.py); the seven below are its
    buffer: int | None = None
    concurrency: int | None = None
    max_staleness: int | None = None
    staleness: str | None = None
    staleness_exponent: float | None = None
    hinge_at: int | None = None
    hinge_slope: float | None = None
    http: str = ""                   # HOST:PORT of the status page (fedtiny.net.status); "": none
    http_public: bool = False        # allow a non-loopback --http address
    secagg: bool = False             # SecAgg+ rounds (fedtiny.net.secagg_round); the grid's bound is clip_norm
    secagg_bits: int | None = None
    secagg_k: int | None = None
    secagg_t: int | None = None
    secagg_min_survivors: int | None = None
    secagg_stage_timeout: float = 5.0
    dp: str = "none"                                 # differential privacy (fedtiny.privacy.aggregator_dp)
    adaptive_clip: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    dp_test_seed: int | None = None                  # tests only: a reproducible noise stream (never a flag)

    def check(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)
        parse_hostport(self.listen, "--listen")
        need(self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}")
        need(self.min_clients >= 1, f"--min-clients must be >= 1, got {self.min_clients}")
        need(0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}")
        need(self.round_timeout > 0, f"--round-timeout must be > 0 seconds, got {self.round_timeout}")
        need(self.epochs >= 1 and self.epochs < 2**16, f"--epochs must be in 1..65535, got {self.epochs}")
        need(self.batch >= 1 and self.batch < 2**16, f"--batch must be in 1..65535, got {self.batch}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        need(math.isfinite(self.prox_mu) and self.prox_mu >= 0, f"--prox-mu must be >= 0, got {self.prox_mu}")
        need(self.codec in CODECS, f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        need(self.down_codec in transfer.DOWN_CODECS,
             f"--down-codec must be one of {', '.join(transfer.DOWN_CODECS)}, got {self.down_codec!r}")
        need(not self.secagg or CODECS[self.codec][0] == wire.CODEC_INT8,
             f"--codec {self.codec} does not apply with --secagg: a masked update is the round's shared integer "
             "grid (--secagg-bits); leave --codec out (any --down-codec works)")
        need(self.slots >= 0, f"--slots must be >= 0 (0: sized by --staging-mb), got {self.slots}")
        need(math.isfinite(self.staging_mb) and self.staging_mb > 0, f"--staging-mb must be > 0, got {self.staging_mb}")
        need(math.isfinite(self.upload_seconds) and self.upload_seconds >= 0,
             f"--upload-seconds must be >= 0 (0: derived), got {self.upload_seconds}")
        need(self.ingest in ("c", "python"), f"--ingest must be c or python, got {self.ingest!r}")
        need(math.isfinite(self.send_rate) and self.send_rate > 0, f"--send-rate must be > 0 MB/s, got {self.send_rate}")
        need(math.isfinite(self.device_rate) and self.device_rate > 0,
             f"--device-rate must be > 0 MB/s, got {self.device_rate}")
        need(0 <= self.seed < 2**32, f"--seed must be in 0..2^32-1, got {self.seed}")
        need(1 <= self.max_samples <= bounds.MAX_WIRE_SAMPLES,
             f"--max-samples must be in 1..{bounds.MAX_WIRE_SAMPLES}, got {self.max_samples}")
        need(math.isfinite(self.clip_norm) and self.clip_norm >= 0,
             f"--clip-norm must be a finite number >= 0 (0: no clipping), got {self.clip_norm}")
        need(bool(self.keys), "--keys FILE is required")
        buffered.check_config(self)
        if self.http:
            status.check_address(self.http, self.http_public)
        need(bool(self.state), "--state DIR is required")
        self.check_secagg()
        aggregator_dp.check(self)

    def check_secagg(self) -> None:
        names = ("secagg_bits", "secagg_k", "secagg_t", "secagg_min_survivors")
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(self, n) is not None]
        if not self.secagg:
            if given:
                raise ValueError(f"{', '.join(given)} needs --secagg")
            return
        if not self.clip_norm > 0:
            raise ValueError("--secagg needs --clip-norm C > 0: it is the bound of the round's shared grid")
        if self.secagg_bits not in (None, 16, 32):
            raise ValueError(f"--secagg-bits must be 16 or 32, got {self.secagg_bits}")
        if not (math.isfinite(self.secagg_stage_timeout) and self.secagg_stage_timeout > 0):
            raise ValueError(f"--secagg-stage-timeout must be > 0 seconds, got {self.secagg_stage_timeout}")
        self.secagg_config().for_round(max(2, self.min_clients))   # every bad k/t/min, named

    def secagg_config(self):
        from ..privacy.secagg import Config
        return Config(clip=self.clip_norm, bits=self.secagg_bits, neighbours=self.secagg_k,
                      threshold=self.secagg_t, min_survivors=self.secagg_min_survivors)


@dataclass
class _Device:
    id: int
    psk: bytes
    session: session.Session | None = None       # current: the last one a frame was tagged with
    pending: dict = field(default_factory=dict)  # session number -> Session offered in a WELCOME, unused
    next_number: int = 0                         # last session number given (1..65535, wraps)
    welcomed: float = -math.inf                  # when the last WELCOME went out
    excluded: str = ""                           # why it is never selected (it cannot train the model)
    addr: tuple | None = None
    last_seen: float = -math.inf
    n_samples: int = 0
    upload: tuple | None = None      # (n_samples, steps, loss, seed, flags) of its current round
    acked: int = 0                   # update chunks received since the last ACK sent
    told: dict = field(default_factory=dict)   # error code -> when this device was last told
    rounds_done: int = 0             # its updates accepted into a round (the status page)
    bytes_down: int = 0              # bytes sent to it
    last_rejection: str = ""         # reason of its last frame or update dropped, and when
    rejected_at: float = -math.inf


@dataclass
class _RoundRun:
    id: int
    rnd: rounds.Round
    ingest: ingest.UpdateIngest
    selected: frozenset
    model: bytes
    offer: bytes
    model_chunks: int
    started: float
    download: download.ModelDownload = None
    announced: dict = field(default_factory=dict) # device -> n_samples of its HELLO when the round opened
    refused: set = field(default_factory=set)     # devices whose RESULT broke the bounds: not waited for
    offered: dict = field(default_factory=dict)   # device -> time of last offer sent
    asked: set = field(default_factory=set)       # devices that asked for model chunks
    bytes_up: int = 0
    bytes_down: int = 0
    down_by_type: Counter = field(default_factory=Counter)
    cpu_started: float = field(default_factory=time.process_time)
    secure_problem: str = ""                      # --secagg: why the round's protocol could not start


class Aggregator(asyncio.DatagramProtocol):
    def __init__(self, cfg: AggregateConfig, *, out=None):
        from .. import model as model_mod
        from .. import train
        cfg.check()
        self.cfg = cfg
        self.out = out if out is not None else sys.stdout
        self.keys = keys_mod.load_keys(cfg.keys)
        self.model = model_mod.build(cfg.model)
        self.train = train
        self.test = None
        if cfg.dataset:
            data = datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.seed)
            try:
                datasets.check_model_fits(self.model, data, cfg.model)
            except ValueError as exc:
                raise ValueError(f"--dataset {cfg.dataset} (the test set): {exc}; or --dataset none") from None
            self.test = (data.x_test, data.y_test)
        optimizer = rounds.make_server_optimizer(cfg.server_opt, lr=cfg.server_lr)
        self.dp = aggregator_dp.create(cfg, len(self.keys), self.model.n_params)   # None without --dp
        self.bounds = (self.dp.bounds() if self.dp else
                       bounds.Bounds(max_samples=cfg.max_samples, clip_norm=cfg.clip_norm or None))
        stage = self.dp.stage if self.dp else None
        self.up_codec = CODECS[cfg.codec][0]      # the run's upload format: its staging memory is sized for it
        self.download = transfer.Download(cfg.down_codec, self.model.n_params)
        ckpt = state.load(cfg.state)
        if ckpt is not None:
            if ckpt.weights.size != self.model.n_params:
                raise ValueError(f"state directory {cfg.state} holds a model of {ckpt.weights.size} parameters, "
                                 f"--model {cfg.model} has {self.model.n_params}")
            self.server = rounds.Server(ckpt.weights, optimizer=optimizer, bounds=self.bounds, sum_stage=stage)
            self.server.round_id = ckpt.round
            optimizer.load_state(self.download.load_state(dict(ckpt.optimizer)))
            self.metrics = ckpt.metrics
            if self.dp:
                self.dp.resume(self.metrics)
        else:
            self.server = rounds.Server(self.model.init(cfg.seed), optimizer=optimizer, bounds=self.bounds, sum_stage=stage)
            self.metrics = []
        self.resumed_from = self.server.round_id
        n = self.server.n_params
        self.slots = cfg.slots or ingest.slots_for_budget(n, cfg.staging_mb * 1e6, self.up_codec)
        update_bytes = transfer.update_nbytes(n, self.up_codec)
        self.upload_seconds = cfg.upload_seconds or max(UPLOAD_MIN_SECONDS, 10 * update_bytes / (cfg.device_rate * 1e6))
        self.staging = ingest.Staging(n, self.slots, self.up_codec)   # allocated once; pages touched as slots are used
        self.rx = rx_mod.Receiver(self.keys, self.staging, ack_every=ACK_EVERY) if cfg.ingest == "c" else None
        self.sock = None
        self.devices: dict[int, _Device] = {}
        self.rejected: Counter[str] = Counter()          # whole run (since this process started)
        self.round_rejected: Counter[str] = Counter()
        self.clipped = self.round_clipped = 0            # updates scaled down to --clip-norm (accepted)
        self.current: _RoundRun | None = None
        self.transport = None
        self.finished = False
        self._wake = asyncio.Event()
        self.arch_hash = self.model.arch_hash()
        self.secagg = None
        if cfg.secagg:
            from . import secagg_round
            self.secagg = secagg_round.AggregatorSecAgg(cfg.secagg_config(), stage_timeout=cfg.secagg_stage_timeout,
                                                        dp=self.dp if cfg.dp == "distributed" else None)
        self.run_id: bytes = b""     # set by serve() from --state (state.begin_life)
        self.epoch = 0
        self.run_tag = 0
        # --mode async: the rounds are FedBuff's buffers (fedtiny/net/buffered.py), hooked in below
        self.driver = (buffered.BufferedRounds(self, codec_flags=CODECS[cfg.codec][1], alive_seconds=ALIVE_SECONDS,
                                               ack_every=ACK_EVERY) if cfg.mode == "async" else None)
        self.started = time.monotonic()
        self.status_server: status.StatusServer | None = None

    # -- transport ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def _send(self, dev: _Device, frame: bytes, addr=None) -> None:
        addr = addr or dev.addr
        if addr is None or self.transport is None:
            return
        self.transport.sendto(frame, addr)
        dev.bytes_down += len(frame)
        if self.current is not None:
            self.current.bytes_down += len(frame)
            self.current.down_by_type[frame[3]] += len(frame)
        elif self.driver is not None:
            self.driver.count_down(len(frame))

    def _reject(self, reason: str, who: str, detail: str = "", dev: _Device | None = None) -> None:
        if dev is not None:
            dev.last_rejection, dev.rejected_at = reason, time.monotonic()
        self.rejected[reason] += 1
        self.round_rejected[reason] += 1
        if self.round_rejected[reason] <= LOG_PER_REASON:
            log.warning("dropped frame from %s: %s%s", who, reason, f" ({detail})" if detail else "")

    def datagram_received(self, data: bytes, addr, *, counted: bool = False) -> None:
        """The Python receive path (--ingest python): the reference the C path is checked
        against; the C path hands it the frames it does not handle itself (joins, a session
        not yet current, an in-session HELLO)."""
        now = time.monotonic()
        if self.current is not None and not counted:
            self.current.bytes_up += len(data)
        elif self.driver is not None and not counted:
            self.driver.count_up(len(data))
        who = f"{addr[0]}:{addr[1]}"
        dev = None
        try:
            head = session.peek(data)
            mtype, device_id = head.type, head.device_id
            who = f"device {device_id} at {who}"
            dev = self._device(device_id)
            if dev is None:
                raise Rejected("unknown_device", "no key for it")
            if head.session == 0:     # a join: the only frame outside a session
                self._on_join(dev, session.open_join(data, dev.psk), addr, now)
                return
            sess = dev.session if dev.session is not None and dev.session.number == head.session \
                else dev.pending.get(head.session)
            if sess is None:
                raise session.stale_reason(data, self.run_tag, self.epoch)
            hdr = sess.open(data)     # the session, its tag, then round and replay
            if sess is not dev.session:
                self._promote(dev, sess)
            self._on_frame(dev, hdr, addr, now)
        except (Rejected, wire.FrameError) as exc:   # wire.FrameError: a payload that does not parse
            self._reject(exc.reason, who, str(exc), dev)
            if counted and self.rx is not None:       # handed over by the C path: charge the source
                self.rx.penalize(addr, now)

    def _device(self, device_id: int) -> _Device | None:
        dev = self.devices.get(device_id)
        if dev is None:
            key = self.keys.get(device_id)
            if key is None:
                return None
            dev = self.devices[device_id] = _Device(device_id, key)
        return dev

    def _on_frame(self, dev: _Device, hdr: wire.Frame, addr, now: float) -> None:
        """An authentic frame of the device's current session (tag, round and replay checked;
        a HELLO's sequence number checked against the last HELLO's)."""
        mtype, payload = hdr.type, hdr.payload
        dev.addr, dev.last_seen = addr, now
        if mtype == session.HELLO:
            hello = wire.Hello.unpack(payload)
            self._check_hello_samples(dev, hello)
            self._on_hello(dev, hello, now)
            return
        if mtype == session.ERROR:
            self._on_device_error(dev, wire.ErrorMsg.unpack(payload))
            return
        if self.driver is not None:
            self.driver.on_frame(dev, hdr, now)
            return
        run = self.current
        if run is None or hdr.round != run.id:
            self._tell(dev, hdr.round, session.E_ROUND_CLOSED, f"round {hdr.round} is closed")
            raise Rejected("round_closed", f"sent round {hdr.round}")
        if dev.id not in run.selected:
            self._tell(dev, hdr.round, session.E_NOT_SELECTED, f"device {dev.id} is not in round {run.id}")
            raise Rejected("not_selected")
        if mtype == session.ACK:
            self._on_model_ack(dev, run, payload, now)
        elif mtype == session.RESULT:
            self._on_result(dev, run, wire.Result.unpack(payload), now)
        elif mtype == session.UPDATE_CHUNK:
            self._on_chunk(dev, run, hdr, payload, now)
        elif mtype in wire.SECAGG_TYPES and self.secagg is not None:
            self.secagg.on_frame(dev.id, hdr, now)
            self._wake.set()
        else:
            raise Rejected("unexpected_type", f"type {mtype} is not sent by devices")

    def _on_readable(self) -> None:
        """The C receive path (--ingest c): datagrams were checked and chunks staged in C."""
        now = time.monotonic()
        events, _more = self.rx.poll(self.sock.fileno(), now)
        dropped, nbytes = self.rx.take_counts()
        if self.current is not None:
            self.current.bytes_up += nbytes
        elif self.driver is not None:
            self.driver.count_up(nbytes)
        for reason, n in dropped.items():
            self.rejected[reason] += n
            self.round_rejected[reason] += n
            if self.round_rejected[reason] <= LOG_PER_REASON:
                log.warning("dropped %d frame(s): %s (counted by the C receive path)", n, reason)
        for ev in events:
            dev = self._device(ev.device_id)
            who = f"device {ev.device_id} at {ev.addr[0]}:{ev.addr[1]}"
            try:
                if ev.kind == rx_mod.EVENT_RAW:      # not checked in C: the reference path does it
                    self.datagram_received(ev.raw, ev.addr, counted=True)
                    continue
                if ev.kind == rx_mod.EVENT_FRAME:
                    self._on_frame(dev, ev.frame, ev.addr, now)
                    continue
                dev.addr, dev.last_seen = ev.addr, now
                run = self.current
                if run is None:
                    continue
                outcome = run.ingest.staged(dev.id, now)
                if outcome == "complete":
                    self._ack_update(dev, run)
                    self._wake.set()
                elif outcome == "added":
                    self._ack_update(dev, run)
            except (Rejected, wire.FrameError) as exc:
                self._reject(exc.reason, who, str(exc), dev)

    def error_received(self, exc) -> None:  # ICMP port unreachable from a device that went away
        log.debug("socket error: %s", exc)

    # -- messages ----------------------------------------------------------------------------
    def _tell(self, dev: _Device, round_id: int, code: int, text: str, *, always: bool = False) -> None:
        """An ERROR to the device; at most one per code every TELL_SECONDS (a late upload of
        200 chunks gets one answer, not 200)."""
        now = time.monotonic()
        if dev.session is None or (not always and now - dev.told.get(code, -math.inf) < TELL_SECONDS):
            return
        dev.told[code] = now
        self._send(dev, dev.session.seal(session.ERROR, round_id, wire.ErrorMsg(code, text).pack()))

    def _on_join(self, dev: _Device, hello, addr, now: float) -> None:
        """A join HELLO: answer with a WELCOME for a new session bound to its nonce (the same
        one again for the same nonce). Nothing else changes until a frame of that session
        arrives, so a replayed join HELLO costs one WELCOME and moves nothing."""
        if now - dev.welcomed < WELCOME_SECONDS:
            raise Rejected("hello_rate", f"one WELCOME per device per {WELCOME_SECONDS} s")
        sess = next((s for s in dev.pending.values() if s.welcome.device_nonce == hello.nonce), None)
        if sess is None:
            number = dev.next_number % 0xFFFF + 1
            while dev.session is not None and number == dev.session.number:
                number = number % 0xFFFF + 1
            dev.next_number = number
            welcome = wire.Welcome(self.run_id, self.epoch, number, hello.nonce, session.new_nonce())
            sess = dev.pending[number] = session.Session(dev.id, dev.psk, welcome)
            while len(dev.pending) > PENDING_SESSIONS:
                dev.pending.pop(next(iter(dev.pending)))
        dev.welcomed = now
        self._send(dev, session.welcome_frame(dev.id, dev.psk, sess.welcome), addr)

    def _promote(self, dev: _Device, sess: session.Session) -> None:
        """The first frame tagged with a pending session's key: it becomes the device's session
        (the device rebooted or rejoined); older sessions' frames are stale from now on."""
        dev.session = sess
        if self.rx is not None:
            self.rx.set_session(dev.id, sess)
        dev.pending.clear()
        dev.excluded = ""            # it may have been restarted with the right --model
        run = self.current
        if run is not None and dev.id in run.selected:
            sess.new_round(run.id)
        log.info("device %d: session %d of run %s epoch %d", dev.id, sess.number, self.run_id.hex(), self.epoch)

    def _on_device_error(self, dev: _Device, err) -> None:
        log.info("device %d reports error %d: %s", dev.id, err.code, err.text)
        if err.code == session.E_MODEL and not dev.excluded:
            dev.excluded = err.text
            log.warning("device %d cannot train --model %s: it is not selected again (%s)", dev.id,
                        self.cfg.model, err.text)
            self._tell(dev, dev.session.round, session.E_MODEL,
                       f"the aggregator runs --model {self.cfg.model} ({self.server.n_params} parameters, "
                       f"architecture {self.arch_hash[:4].hex()}): this device is not selected again", always=True)

    def _check_hello_samples(self, dev: _Device, hello) -> None:
        """A device whose announced n_k breaks the bounds is told why and never selected (until
        a new session of it announces an acceptable n_k)."""
        problem = self.bounds.check_samples(hello.n_samples)
        if problem is None:
            if dev.excluded.startswith(bounds.TOO_MANY_SAMPLES):
                dev.excluded = ""
            return
        reason, _, text = problem.partition(": ")
        dev.excluded = problem
        self._tell(dev, dev.session.round, session.E_REFUSED, f"device {dev.id}: {text}", always=True)
        raise Rejected(reason, f"HELLO: {text}")

    def _on_hello(self, dev: _Device, hello, now: float) -> None:
        first = dev.n_samples == 0
        dev.last_seen, dev.n_samples = now, hello.n_samples
        if first:
            log.info("device %d joined from %s:%d (%d samples)", dev.id, dev.addr[0], dev.addr[1], hello.n_samples)
        if self.finished:
            self._tell(dev, dev.session.round, session.E_FINISHED, "training is finished")
            return
        if self.driver is not None:
            self.driver.on_hello(dev, now)
            return
        run = self.current
        if run is not None and dev.id in run.selected and not run.ingest.is_complete(dev.id):
            self._offer(dev, run, now)   # a device that restarted mid-round asks again
        else:   # an answer, so that a device hears the aggregator is alive in this epoch
            self._tell(dev, dev.session.round, session.E_NOT_SELECTED, "waiting for the next round")
        self._wake.set()

    def _offer(self, dev: _Device, run: _RoundRun, now: float) -> None:
        log.debug("offer to device %d", dev.id)
        run.offered[dev.id] = now
        self._send(dev, dev.session.seal(session.OFFER, run.id, run.offer))

    def _on_model_ack(self, dev: _Device, run: _RoundRun, payload: bytes, now: float) -> None:
        ack = wire.Ack.unpack(payload)
        if ack.acked_type != session.MODEL_CHUNK or ack.first != 0 or ack.n_bits != run.model_chunks:
            raise Rejected("bad_payload", "model ack does not cover the model's chunks")
        run.asked.add(dev.id)
        received = np.zeros(run.model_chunks, dtype=bool)
        received[list(ack.received)] = True
        run.download.ack(dev.id, received, now)   # the pacer sends what it still misses
        self._pace(run, now)

    def _pace(self, run: _RoundRun, now: float) -> None:
        """Send the model chunks that are due, while the socket's send buffer has room (a full
        buffer would queue copies that an impatient device then asks for again)."""
        size = session.MODEL_CHUNK_BYTES
        if self.transport is not None and self.transport.get_write_buffer_size() == 0:
            # one batch per call: the event loop reads the socket between two batches
            for d, i in run.download.next_sends(now, limit=PACE_BATCH):
                dev = self.devices[d]
                self._send(dev, dev.session.seal(session.MODEL_CHUNK, run.id, run.model[i * size:(i + 1) * size],
                                                 chunk_index=i, chunk_count=run.model_chunks))

    def _ack_update(self, dev: _Device, run: _RoundRun) -> None:
        dev.acked = 0
        ack = wire.Ack.pack_flags(session.UPDATE_CHUNK, run.ingest.received(dev.id))
        self._send(dev, dev.session.seal(session.ACK, run.id, ack))

    def _on_result(self, dev: _Device, run: _RoundRun, res, now: float) -> None:
        if res.update_chunks != run.ingest.n_chunks:
            raise Rejected("bad_payload", f"announces {res.update_chunks} update chunks, the model needs {run.ingest.n_chunks}")
        if not (res.n_samples > 0 and math.isfinite(res.loss) and res.steps > 0):
            raise Rejected("bad_payload", "n_samples and steps must be positive, loss finite")
        announced = run.announced.get(dev.id)
        if res.n_samples != announced:
            if dev.upload is None:   # nothing of it is staged: the round stops waiting for it
                run.refused.add(dev.id)
                self._wake.set()
            raise Rejected("samples_mismatch", f"RESULT n_k {res.n_samples}, its HELLO announced {announced} for round {run.id}")
        upload = (int(res.n_samples), int(res.steps), float(res.loss), int(res.update_seed), int(res.update_flags))
        if dev.upload is not None and dev.upload[:2] != upload[:2]:
            raise Rejected("weight_changed", f"n_k {dev.upload[0]} -> {upload[0]} within round {run.id}")
        dev.upload = upload
        try:
            slot = run.ingest.reserve(dev.id, float(upload[0]), now, flags=upload[4], seed=upload[3])
        except ValueError as exc:
            raise Rejected(str(exc)) from None
        if slot:
            self._ack_update(dev, run)
        else:
            self._tell(dev, run.id, session.E_BUSY, "every upload slot is taken: retry")

    def _on_chunk(self, dev: _Device, run: _RoundRun, hdr, payload: bytes, now: float) -> None:
        if dev.upload is None:
            raise Rejected("no_result", "update chunk before the device's RESULT (its weight)")
        if hdr.chunk_count != run.ingest.n_chunks:
            raise Rejected("bad_chunk", f"chunk count {hdr.chunk_count}, the model has {run.ingest.n_chunks}")
        try:
            outcome = run.ingest.add_chunk(dev.id, float(dev.upload[0]), hdr.chunk_index, payload, now,
                                           flags=dev.upload[4], seed=dev.upload[3])
        except ValueError as exc:
            raise Rejected(str(exc), f"update chunk {hdr.chunk_index}") from None
        if outcome == "busy":   # its slot was reclaimed (it stalled): it learns on its next RESULT
            self.round_rejected["busy"] += 1
            self.rejected["busy"] += 1
            return
        if outcome == "duplicate":
            self.round_rejected["duplicate_chunk"] += 1
            self.rejected["duplicate_chunk"] += 1
        dev.acked += 1
        if outcome == "complete":
            self._ack_update(dev, run)
            self._wake.set()
        elif dev.acked >= ACK_EVERY:
            self._ack_update(dev, run)

    def _commit(self, device_id: int, update, weight: float) -> None:
        dev = self.devices[device_id]
        weight = 1.0 if self.dp else weight   # under DP every device weighs the same
        verdict = self.current.rnd.submit(device_id, self.current.id, update, weight, steps=dev.upload[1])
        if not verdict.accepted:
            self._reject(verdict.reason, f"device {device_id}", verdict.detail, dev)
            self._tell(dev, self.current.id, session.E_REJECTED, verdict.detail or verdict.reason, always=True)
            return
        dev.rounds_done += 1
        if verdict.detail.startswith(bounds.CLIPPED):
            self._count_clipped(verdict.detail)

    def _count_clipped(self, detail: str) -> None:
        """Clipped updates are accepted, so they are counted beside the rejections, not as one."""
        self.clipped += 1
        self.round_clipped += 1
        if self.round_clipped <= LOG_PER_REASON:
            log.info("%s", detail)

    # -- rounds ------------------------------------------------------------------------------
    def _alive(self, now: float) -> list[int]:
        return sorted(d.id for d in self.devices.values()
                      if d.session is not None and not d.excluded and now - d.last_seen <= ALIVE_SECONDS)

    async def _wait_for_devices(self, stop: asyncio.Event) -> list[int] | None:
        said = -1
        while not stop.is_set():
            alive = self._alive(time.monotonic())
            if len(alive) >= self.cfg.min_clients:
                return alive
            if len(alive) != said:
                log.info("waiting for devices: %d of %d joined", len(alive), self.cfg.min_clients)
                said = len(alive)
            await self.tick(wait=0.5)
        return None

    async def tick(self, *, downloading: bool = False, wait: float = 0.05) -> None:
        """Let the loop serve: one pacer tick while a download runs, else until a frame wakes
        the round (or `wait` seconds pass)."""
        if downloading:
            await asyncio.sleep(PACE_SECONDS)
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), wait)
        except asyncio.TimeoutError:
            pass

    def _open_round(self, alive: list[int], now: float) -> _RoundRun:
        cfg = self.cfg
        r = self.server.round_id + 1
        selected = rounds.sample_clients(alive, cfg.fraction, seed=cfg.seed, round_id=r, minimum=cfg.min_clients)
        m = min(cfg.min_clients, len(selected))
        if self.dp:   # accounted as this draw; the round waits for every sampled device (fixed denominator)
            if not self.dp.open_round(len(alive), len(selected)):
                log.info("%s", self.dp.spent_detail)
                self.finished = True
                return None
            self.server.bounds = self.dp.bounds()
            m = len(selected)
        rnd = self.server.open_round(selected.tolist(), deadline=now + cfg.round_timeout, min_updates=m)
        up_codec, codec_flags = CODECS[cfg.codec]   # the flags may change between rounds (a Flower fleet's header)
        if up_codec != self.up_codec:
            raise ValueError(f"--codec {cfg.codec}: this run stages {self.up_codec}-bit updates; the upload "
                             "format cannot change within a run")
        start = self.download.publish(self.server.params)   # what every device of the round starts from
        n = self.server.n_params
        offer = wire.Offer(n_params=n, codec_flags=codec_flags, model_hash=wire.model_hash(start),
                           lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch,
                           deadline_ms=int(cfg.round_timeout * 1000), seed=cfg.seed, prox_mu=cfg.prox_mu,
                           arch_hash=self.arch_hash, fixed_scale=cfg.clip_norm if self.secagg is not None else 0.0,
                           up_codec=self.up_codec, down_codec=self.download.codec)
        run = _RoundRun(r, rnd, None, frozenset(selected.tolist()), self.download.message, offer.pack(),
                        wire.model_chunks(n, self.download.codec), now)
        run.download = download.ModelDownload(run.model_chunks, session.MODEL_CHUNK_BYTES + FRAME_OVERHEAD,
                                              window=MODEL_WINDOW, total_rate=cfg.send_rate * 1e6,
                                              device_rate=cfg.device_rate * 1e6)
        run.ingest = ingest.UpdateIngest(n, self._commit, upload_seconds=self.upload_seconds, staging=self.staging,
                                         on_slot=self.rx.set_slot if self.rx is not None else None,
                                         order=run.selected)   # folded in id order as they complete
        if self.rx is not None:
            self.rx.start_round(r, run.selected)
        self.round_rejected = Counter()
        self.round_clipped = 0
        for d in run.selected:
            dev = self.devices[d]
            dev.upload, dev.acked = None, 0
            dev.session.new_round(r)
            run.announced[d] = dev.n_samples
        if self.secagg is not None:   # SETUP goes out with the round; the devices answer before training
            def send(d, t, payload, chunk, r=r):
                dev = self.devices[d]
                self._send(dev, dev.session.seal(t, r, payload, *chunk))
            run.secure_problem = self.secagg.open(r, sorted(run.selected), n, send, now, rnd.deadline)
        return run

    async def _run_round(self, stop: asyncio.Event) -> bool:
        alive = await self._wait_for_devices(stop)
        if alive is None:
            return False
        now = time.monotonic()
        run = self.current = self._open_round(alive, now)
        if run is None:   # --target-epsilon: this round would overspend the privacy budget
            return False
        log.info("round %d: %d device(s) selected, closes at %d updates or in %.0f s",
                 run.id, len(run.selected), run.rnd.min_updates, self.cfg.round_timeout)
        while not stop.is_set():
            now = time.monotonic()
            # a selected device that refused the model (excluded) will not deliver: wait only for the rest
            # nor one whose RESULT broke the bounds (run.refused)
            target = min(run.rnd.min_updates, sum(1 for d in run.selected
                                                  if not self.devices[d].excluded and d not in run.refused))
            if self.secagg is not None:
                if self.secagg.poll(now):
                    break
            elif run.ingest.n_complete >= target or now >= run.rnd.deadline:
                break
            for d in sorted(run.selected - run.asked):
                if now - run.offered.get(d, -math.inf) >= REOFFER_SECONDS:
                    self._offer(self.devices[d], run, now)
            self._pace(run, now)
            await self.tick(downloading=run.download.active)
        if stop.is_set():
            self.current = None
            return False
        self._close_round(run, time.monotonic())
        return True

    def _close_round(self, run: _RoundRun, now: float) -> None:
        if self.rx is not None:
            self.rx.close_round()
        ingest_stats = run.ingest.close()       # commits what is still staged, in device-id order
        secure = self.secagg.close(run.rnd, run.secure_problem) if self.secagg is not None else {}
        result = self.server.close_round(now)
        self.current = None
        contributors = set(result.contributors)
        if self.secagg is not None:   # survivors of a secure round (the int8 path counts in _commit)
            for d in contributors:
                self.devices[d].rounds_done += 1
        losses = [(self.devices[d].upload[0], self.devices[d].upload[2]) for d in contributors
                  if self.devices[d].upload is not None]   # under --secagg devices send no RESULT
        n = sum(w for w, _ in losses)
        row = {"round": run.id, "clients": len(contributors), "selected": len(run.selected),
               "samples": int(result.n_samples), "outcome": result.outcome, "closed_by": result.closed_by,
               "train_loss": sum(w * l for w, l in losses) / n if n else math.nan,
               "test_loss": math.nan, "test_acc": math.nan,
               "bytes_up": run.bytes_up, "bytes_down": run.bytes_down, "round_s": now - run.started,
               "cpu_s": time.process_time() - run.cpu_started,
               "stragglers": sorted(run.selected - contributors), "dropped_uploads": ingest_stats.dropped,
               "down_by_type": {session.M(t).name: v for t, v in run.down_by_type.items()},
               "model_chunks_sent": run.download.sent_chunks, "model_chunks_resent": run.download.resent_chunks,
               "model_restarts": run.download.restarts,
               "rejected": dict(self.round_rejected), "clipped": self.round_clipped,
               "slots_touched": self.staging.touched, **secure}
        if self.dp:   # noise was drawn whenever the sum stage ran: the round counts even if then refused
            row.update(self.dp.close_round(result.outcome == "applied" or bounds.NONFINITE_STEP in result.rejected,
                                           len(contributors), self.round_clipped))
            log.info("round %d: epsilon %.4f (delta %g), clip %.4g, %d clipped", run.id, row["epsilon"],
                     self.cfg.delta, row["clip_norm"], row["clipped"])
        if bounds.NONFINITE_STEP in result.rejected:
            # The model did not change and nothing is written: a restart redoes this round.
            self.rejected[bounds.NONFINITE_STEP] += 1
            row["rejected"][bounds.NONFINITE_STEP] = 1
            log.warning("%s", result.detail)
            self.metrics.append(row)
            self._tell_closed(run, result, set(), "abandoned")
            self._print_row(row)
            return
        if self.test is not None:
            row["test_loss"], row["test_acc"] = map(float, self.train.evaluate(self.model, self.server.params, *self.test))
        self.metrics.append(row)
        meta = {"model": self.cfg.model, "seed": self.cfg.seed}
        if self.dp:
            meta["dp"] = self.dp.summary()
        state.save(self.cfg.state, state.Checkpoint(self.server.round_id, self.server.params,
                                                    {**self.server.optimizer.state(), **self.download.state()},
                                                    self.metrics, meta))
        summary = wire.Result(n_samples=min(int(result.n_samples), bounds.MAX_WIRE_SAMPLES), n_clients=len(contributors),
                              loss=row["test_loss"], accuracy=row["test_acc"]).pack()
        self._tell_closed(run, result, contributors, result.closed_by, summary)
        self._print_row(row)

    def _tell_closed(self, run: _RoundRun, result, contributors: set, why: str, summary: bytes = b"") -> None:
        for d in run.selected:
            dev = self.devices[d]
            if d in contributors:
                self._send(dev, dev.session.seal(session.RESULT, run.id, summary))
            else:
                self._tell(dev, run.id, session.E_ROUND_CLOSED,
                           f"round {run.id} closed ({why}) without your update", always=True)

    # -- output ------------------------------------------------------------------------------
    HEADER = (f"{'round':>5} {'clients':>7} {'samples':>7} {'train loss':>10} {'test loss':>9} {'test acc':>8} "
              f"{'up KB':>8} {'down KB':>8} {'time s':>6}  rejected")

    def _print_row(self, row: dict) -> None:
        if row["round"] == self.resumed_from + 1:
            print(self.HEADER, file=self.out)
        rej = ", ".join(f"{k} {v}" for k, v in sorted(row["rejected"].items())) or "-"
        if row.get("clipped"):
            rej += f" (clipped {row['clipped']})"
        if "epsilon" in row:
            rej += f"  epsilon {row['epsilon']:.4f}"
        print(f"{row['round']:>5} {row['clients']:>3}/{row['selected']:<3} {row['samples']:>7} "
              f"{row['train_loss']:>10.4f} {row['test_loss']:>9.4f} {row['test_acc']:>8.4f} "
              f"{row['bytes_up'] / 1e3:>8.1f} {row['bytes_down'] / 1e3:>8.1f} {row['round_s']:>6.2f}  {rej}",
              file=self.out, flush=True)

    # -- main --------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event | None = None, ready=None) -> int:
        """Run the remaining rounds; returns the number of finished rounds in the state directory."""
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        host, port = parse_hostport(self.cfg.listen, "--listen")
        # This life's epoch is on disk before the socket exists: no frame is sent or accepted
        # under an epoch that a later life could reuse.
        self.run_id, self.epoch = state.begin_life(self.cfg.state)
        self.run_tag = wire.run_tag(self.run_id)
        if self.rx is not None:
            self.rx.set_life(self.run_tag, self.epoch)
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
            try:
                self.sock.setblocking(False)
                self.sock.bind(info[4])
            except OSError:
                self.sock.close()
                self.sock = None
                raise
            transport = rx_mod.SocketSender(self.sock)
            self.transport = transport
            loop.add_reader(self.sock.fileno(), self._on_readable)
        else:
            transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.address = transport.get_extra_info("sockname")[:2]
        # Uploads come in bursts from many devices: a deeper socket queue means fewer drops and
        # resends (the kernel caps it at net.core.rmem_max).
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        log.info("aggregating %s (%d parameters) on %s:%d, round %d of %d; run %s epoch %d", self.cfg.model,
                 self.server.n_params, self.address[0], self.address[1], self.server.round_id + 1, self.cfg.rounds,
                 self.run_id.hex(), self.epoch)
        try:
            if self.cfg.http:
                self.status_server = await status.start(self.cfg.http, lambda: status.aggregator_snapshot(self),
                                                        public=self.cfg.http_public)
            if ready is not None:
                ready(self.address)
            while self.server.round_id < self.cfg.rounds and not stop.is_set():
                if not await (self.driver.run_step(stop) if self.driver is not None else self._run_round(stop)):
                    break
            if self.server.round_id >= self.cfg.rounds or self.finished:   # finished: the privacy budget
                self.finished = True
                for _ in range(3):  # a device that misses these learns it from its next HELLO... or times out
                    for dev in self.devices.values():
                        # in the device's last round: its replay guard refuses older rounds
                        if dev.session is not None:
                            self._tell(dev, dev.session.round, session.E_FINISHED, "training is finished",
                                       always=True)
                    await asyncio.sleep(0.05)
        finally:
            if self.sock is not None:
                loop.remove_reader(self.sock.fileno())
            transport.close()
            if self.status_server is not None:
                await self.status_server.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        if stop.is_set():
            log.info("stopped: %d round(s) finished and saved in %s", self.server.round_id, self.cfg.state)
        return self.server.round_id


# --- command line ---------------------------------------------------------------------------

HELP = "run the FedAvg aggregator: a UDP server for devices and bridges"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = AggregateConfig()
    p.add_argument("--listen", default=d.listen, metavar="HOST:PORT", help="UDP address to listen on (default %(default)s)")
    p.add_argument("--model", default=d.model, help="2nn, cnn, mlp:A-B-...-K, seq:... or a float FILE.tflite (default %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--min-clients", type=int, default=d.min_clients, help="M: devices to wait for; a round closes at M updates")
    p.add_argument("--fraction", type=float, default=d.fraction, help="C: fraction of live devices sampled per round")
    p.add_argument("--round-timeout", type=float, default=d.round_timeout, metavar="S",
                   help="round deadline in seconds (--mode async: a task whose device is silent this long is dropped)")
    p.add_argument("--keys", required=True, metavar="FILE", help="per-device keys, one 'device_id hexkey' per line")
    p.add_argument("--state", required=True, metavar="DIR", help="checkpoint and metrics directory (resumes from it)")
    p.add_argument("--dataset", default=d.dataset, help="test set for evaluation: digits, fashion-mnist, ..., PATH.npz, or none")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--prox-mu", type=float, default=d.prox_mu)
    p.add_argument("--codec", default=d.codec, choices=tuple(CODECS),
                   help="the update devices send (default %(default)s; docs/PROTOCOL.md)")
    p.add_argument("--down-codec", default=d.down_codec, choices=tuple(transfer.DOWN_CODECS),
                   help="the model devices download: float32, or the whole model as int8 / int4 blocks with "
                        "error feedback on the aggregator (default %(default)s)")
    p.add_argument("--server-opt", default=d.server_opt, choices=tuple(rounds.SERVER_OPTIMIZERS))
    p.add_argument("--server-lr", type=float, default=None)
    p.add_argument("--slots", type=int, default=d.slots,
                   help="uploads staged at once (memory: slots x 1.03 bytes/param); default: as many as --staging-mb holds")
    p.add_argument("--staging-mb", type=float, default=d.staging_mb, metavar="MB",
                   help="memory for staged uploads when --slots is not given (default %(default)s MB)")
    p.add_argument("--upload-seconds", type=float, default=d.upload_seconds, metavar="S",
                   help="a device's upload deadline from its slot's opening, after which its slot may go to a waiting "
                        f"device (default: 10x the update's transfer time at --device-rate, at least {UPLOAD_MIN_SECONDS:.0f} s)")
    p.add_argument("--ingest", default=d.ingest, choices=("c", "python"),
                   help="per-datagram path: c (batched receive, checks and staging in C) or python (the reference)")
    p.add_argument("--send-rate", type=float, default=d.send_rate, metavar="MB/S",
                   help="model download pace, all devices together (default %(default)s MB/s)")
    p.add_argument("--device-rate", type=float, default=d.device_rate, metavar="MB/S",
                   help="model download pace to one device (default %(default)s MB/s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-samples", type=int, default=d.max_samples, metavar="N",
                   help="largest n_k (FedAvg weight) a device may claim; more is refused (default %(default)s)")
    p.add_argument("--clip-norm", type=float, default=d.clip_norm, metavar="C",
                   help="each update is scaled down to L2 norm <= C before it is summed; 0: off (default %(default)s)")
    g = p.add_argument_group("asynchronous aggregation (FedBuff, docs/network.md)")
    g.add_argument("--mode", default=d.mode, choices=("sync", "async"),
                   help="sync: rounds of sampled devices; async: up to --concurrency devices train at once, a "
                        "server step every --buffer updates (--rounds counts server steps)")
    rounds.add_async_arguments(g)
    add_http_arguments(p)
    g = p.add_argument_group("secure aggregation (SecAgg+, docs/secagg.md)")
    g.add_argument("--secagg", action="store_true",
                   help="the aggregator learns only the sum: devices mask their updates on a shared grid of bound "
                        "--clip-norm; --codec does not apply")
    g.add_argument("--secagg-bits", type=int, default=None, choices=(16, 32),
                   help="bits per parameter of the masked vector (default 16 up to 127 devices, else 32)")
    g.add_argument("--secagg-k", type=int, default=None,
                   help="neighbours per device (default: all up to 32 devices, else the even number >= 6 log2 n)")
    g.add_argument("--secagg-t", type=int, default=None, help="Shamir threshold t (default floor(k/2) + 1)")
    g.add_argument("--secagg-min-survivors", type=int, default=None,
                   help="abandon the round below this many devices at any stage (default t + 1)")
    g.add_argument("--secagg-stage-timeout", type=float, default=d.secagg_stage_timeout, metavar="S",
                   help="the key, share and unmask stages close after this long (the masked-vector stage at "
                        "--round-timeout) (default %(default)s s)")
    aggregator_dp.add_arguments(p)
    p.add_argument("--verbose", "-v", action="store_true")


def add_http_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", default="", metavar="HOST:PORT",
                   help="serve a live status page, /status.json and /metrics (Prometheus) here; loopback only "
                        "unless --http-public (default: none)")
    p.add_argument("--http-public", action="store_true",
                   help="allow a --http address that is not loopback (the page is read-only and shows no key)")


def config_from_args(args: argparse.Namespace) -> AggregateConfig:
    fields = AggregateConfig.__dataclass_fields__
    cfg = AggregateConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if cfg.dataset in ("none", ""):
        cfg.dataset = None
    return cfg


def run_command(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    cfg = config_from_args(args)
    agg = Aggregator(cfg)
    stop = None

    async def main() -> int:
        nonlocal stop
        stop = asyncio.Event()
        return await agg.serve(stop)
    done = asyncio.run(main())
    print(f"{done} of {cfg.rounds} rounds finished; state in {os.path.abspath(cfg.state)}")
    if agg.dp:
        print(agg.dp.final_line())
        if agg.dp.spent_detail:
            return 0
    if done < cfg.rounds and stop.is_set():
        print(f"stopped by a signal: run the same command again to resume at round {done + 1}")
        return 0
    return 0 if done >= cfg.rounds else 1


__all__ = ["AggregateConfig", "Aggregator", "parse_hostport"]
