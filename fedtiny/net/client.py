"""`fedtiny client`: the device loop over UDP.

join (HELLO with a fresh nonce -> the aggregator's WELCOME opens a session) -> in-session HELLO
until an OFFER -> download the model chunks (an ACK bitmap says what is
still missing; float32, or an int8 / int4 message decoded as the aggregator decoded it) -> local SGD
with fedtiny.train -> encode the delta with the offer's codec (int8, int4, int2, rotated 1-bit) -> RESULT (the weight
n_k) and the update chunks, resending what the aggregator's ACK does not list -> repeat.
When the aggregator is silent (it may have restarted: its frames then name a new epoch) the
device joins again, a new session, with exponential backoff. An OFFER for a model of another
size or architecture is answered with ERROR model; the device then stops (exit code 2).

The loop is one blocking UDP socket and `select` (no asyncio: it would bring ssl and ~10 MB of
RSS onto every device); local training runs in the loop itself, so an error in it ends the
process with one line instead of dying in a background task.

Training and encoding derive their seeds from (run seed, round, device id) exactly as
`fedtiny simulate` does for client k = device id, so a network run reproduces a simulation.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import select
import signal
import socket
import sys
import time

import numpy as np

from ..seeds import derive_seed
from . import session, transfer, wire
# load_data and its checks live in common: the Flower ClientApp reads a device's data the same way
from .common import MODEL_WINDOW, check_features, check_labels, load_data, parse_hostport, setup_logging  # noqa: F401
from .session import Rejected

log = logging.getLogger("fedtiny.client")

TICK = 0.02
# No new model chunk for `ask_quiet` seconds: say again what is missing. It is derived from the
# rate the chunks come at (QUIET_GAPS smoothed gaps between chunks, at least ASK_MIN; before the
# first chunk ASK_FIRST) and doubles on every ask that brings nothing (backoff, up to ASK_MAX).
# The aggregator resends only chunks whose copies timed out, so an early ask costs one ACK, not
# a copy of the window (docs/network.md "Model download").
ASK_FIRST, ASK_MIN, ASK_MAX = 0.5, 0.2, 1.6
QUIET_GAPS = 8
UPLOAD_ACK_WAIT = 0.3     # no ACK for this long after sending: send the RESULT again (it prompts one),
UPLOAD_ACK_MAX = 2.4      # doubling on each RESULT that brings no ACK, up to this
UPLOAD_WINDOW = 32        # update chunks in flight (sent, not yet in an ACK): the aggregator ACKs every 16
RCVBUF_BYTES = 4 * MODEL_WINDOW * 2304   # 4 windows of model chunks (2,304 B: a datagram's kernel cost)
SILENT_SECONDS = 2.0      # no frame from the aggregator while downloading: join again (while
                          # uploading: not before the offer's deadline, the update is kept until then)
HELLO_MIN, HELLO_MAX = 0.5, 8.0
REFUSED_WAIT = 2.0        # after refusing the model: wait this long for the aggregator's answer


def busy_backoff() -> float:
    """0.1 to 0.5 s, uniform, to wait after an aggregator's BUSY (from os.urandom: the random
    module and its imports would cost a device ~0.2 MB of RSS for this one draw)."""
    return 0.1 + 0.4 * int.from_bytes(os.urandom(2), "big") / 65535


def rounding_of(flags: int) -> tuple[str, bool]:
    """The offer's codec_flags -> (rounding, error feedback), as simulate's codecs."""
    return ("stochastic" if flags & 1 else "nearest"), bool(flags & 2)


class Device:
    def __init__(self, device_id: int, key: bytes, model, x: np.ndarray, y: np.ndarray, *,
                 momentum: float = 0.0, weights: str = "float32", max_rounds: int | None = None):
        from .. import train
        self.train = train
        self.id = int(device_id)
        self.psk = bytes(key)
        self.session: session.Session | None = None
        self.nonce: bytes | None = None      # of the join in progress
        self.arch_hash = model.arch_hash()
        self.mismatch = ""                   # why this device cannot train the aggregator's model
        self.model, self.x, self.y = model, x, y
        self.momentum, self.weights = momentum, weights
        self.max_rounds = max_rounds
        self.residual: np.ndarray | None = None    # error feedback lives on the device
        self.sock: socket.socket | None = None
        self.state = "joining"
        self.round = 0
        self.rounds_done = 0
        self.finished = False
        self.rejected: dict[str, int] = {}
        self.kept_round = None               # the round whose partial model download is kept on a new join
        self.failed: str | None = None   # why this device stopped (run_command exits with 2)
        self.secagg = None               # fedtiny.net.secagg_round.DeviceSecAgg, made at the first SETUP
        self.life = None                 # (run id, epoch) of the aggregator of the current session
        self._reset_round()
        self.last_heard = time.monotonic()
        self.last_sent = -math.inf
        self.hello_every = HELLO_MIN

    def _reset_round(self) -> None:
        self.offer = None
        self.model_buf = None
        self.have = None
        self.update = None
        self.result = None
        self.pending_training = None
        self.since_ask = 0             # model chunks received since the last ACK(model)
        self.resend_on_ack = True      # the next ACK triggers sending what it lists as missing
        self.last_progress = time.monotonic()
        self.ask_quiet = ASK_FIRST     # seconds without a new model chunk before asking again
        self.gap = None                # smoothed seconds between two new model chunks
        self.last_chunk = None
        self.upload_wait = UPLOAD_ACK_WAIT
        self.next_chunk = 0            # update chunks [0, next_chunk) were sent at least once
        self.acked: frozenset = frozenset()
        self.offered_at = time.monotonic()

    # -- transport ---------------------------------------------------------------------------
    def _send(self, msg_type: int, payload: bytes = b"", chunk=(0, 1), round_id: int | None = None) -> None:
        r = self.round if round_id is None else round_id
        try:
            self.sock.send(self.session.seal(msg_type, r, payload, *chunk))
        except OSError as exc:   # ICMP port unreachable: nobody listens there (yet); a full buffer
            log.debug("send failed: %s", exc)
        self.last_sent = time.monotonic()

    def _hello(self) -> bytes:
        return wire.Hello(n_samples=len(self.y), nonce=self.nonce or bytes(wire.NONCE_BYTES)).pack()

    def _join(self) -> None:
        """Start a new session: a join HELLO with a new nonce (sent again until a WELCOME echoes it)."""
        self.session, self.nonce = None, session.new_nonce()
        self.state, self.round = "joining", 0

    def _send_join(self) -> None:
        try:
            self.sock.send(session.join_hello(self.id, self.psk, wire.Hello.unpack(self._hello())))
        except OSError as exc:
            log.debug("send failed: %s", exc)
        self.last_sent = time.monotonic()

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            if self.session is None:
                welcome = session.open_welcome(data, self.psk, self.nonce)
                if (welcome.run_id, welcome.epoch) != self.life:
                    # another aggregator life: its round r is a new round (a new SETUP, new keys),
                    # whatever this device answered to the last life's round r
                    self.life, self.secagg = (welcome.run_id, welcome.epoch), None
                self.session = session.Session(self.id, self.psk, welcome, follow_rounds=True)
                self.nonce = None        # one WELCOME per join: a second (replayed) one is stale
                self.state = "waiting"
                log.info("session %d with the aggregator (run %s, epoch %d)", welcome.session,
                         welcome.run_id.hex(), welcome.epoch)
                self.last_heard, self.hello_every = time.monotonic(), HELLO_MIN
                self._send(session.HELLO, self._hello(), round_id=0)   # makes the session current
                return
            frame = self.session.open(data)
        except Rejected as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            log.debug("dropped frame: %s", exc)
            return
        self.last_heard = time.monotonic()
        self.hello_every = HELLO_MIN
        try:
            self._dispatch(frame)
        except wire.FrameError as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            log.debug("dropped payload: %s", exc)

    def _dispatch(self, f: wire.Frame) -> None:
        t = f.type
        if t in wire.SECAGG_TYPES or (t == session.ACK and f.payload[:1] == bytes([session.M.MASKED_UPDATE])):
            self._secure().on_frame(f, time.monotonic())
        elif t == session.OFFER:
            self._on_offer(f.round, wire.Offer.unpack(f.payload))
        elif t == session.MODEL_CHUNK and f.round == self.round and self.state == "downloading":
            self._on_model_chunk(f)
        elif t == session.ACK and f.round == self.round and self.state == "uploading":
            ack = wire.Ack.unpack(f.payload)
            if ack.acked_type == session.UPDATE_CHUNK:
                self._on_update_ack(ack)
        elif t == session.ERROR:
            self._on_error(f.round, wire.ErrorMsg.unpack(f.payload))
        elif t == session.RESULT and f.round == self.round:
            res = wire.Result.unpack(f.payload)
            if self.state == "secure":
                self._round_done()
            log.info("round %d closed: %d device(s), %d samples, test accuracy %.4f",
                     f.round, res.n_clients, res.n_samples, res.accuracy)

    def _on_offer(self, round_id: int, offer: wire.Offer) -> None:
        if round_id == self.round and self.state in ("downloading", "training", "uploading", "secure"):
            return  # the same offer again: already on it
        # (an offer for the round this device finished means the aggregator lost its update,
        # e.g. it was restarted mid-round: take part again; training is deterministic)
        if offer.n_params != self.model.n_params or offer.arch_hash != self.arch_hash:
            self.round = round_id
            what = ("another architecture" if offer.n_params == self.model.n_params
                    else f"{offer.n_params:,} parameters")
            self.mismatch = (f"the aggregator's model ({what}, architecture {offer.arch_hash[:4].hex()}) is not "
                             f"this device's --model {self.model.spec} ({self.model.n_params:,} parameters, "
                             f"architecture {self.arch_hash[:4].hex()})")
            self._send(session.ERROR, wire.ErrorMsg(session.E_MODEL, f"device {self.id}: {self.mismatch}").pack())
            log.debug("round %d: %s", round_id, self.mismatch)   # the exit line says it
            self.state, self.last_progress = "refused", time.monotonic()
            return
        kept = None
        if (self.offer is not None and self.have and self.kept_round == round_id and self.state == "waiting"
                and self.offer.model_hash == offer.model_hash and self.offer.n_params == offer.n_params
                and self.offer.down_codec == offer.down_codec):
            kept = (self.model_buf, self.have)   # joined again into the same round: keep what arrived
        self._reset_round()
        self.round, self.offer, self.state = round_id, offer, "downloading"
        self.model_buf, self.have = kept if kept is not None else (bytearray(offer.model_bytes), set())
        if len(self.have) == offer.model_chunks:
            self._model_complete()
            return
        self._ask_model()

    def _ask_model(self, *, timeout: bool = False) -> None:
        if timeout:     # nothing came since the last ask: wait longer before the next one
            self.ask_quiet = min(ASK_MAX, self.ask_quiet * 2)
        n = self.offer.model_chunks
        self._send(session.ACK, wire.Ack.for_chunks(session.MODEL_CHUNK, self.have, n).pack())
        self.last_progress = time.monotonic()
        self.since_ask = 0

    def _on_model_chunk(self, f: wire.Frame) -> None:
        n = self.offer.model_chunks
        i = f.chunk_index
        size = session.MODEL_CHUNK_BYTES
        expect = min(size, len(self.model_buf) - i * size) if 0 <= i < n else -1
        if f.chunk_count != n or len(f.payload) != expect:
            self.rejected["bad_chunk"] = self.rejected.get("bad_chunk", 0) + 1
            return
        self.last_progress = time.monotonic()
        if i in self.have:
            return
        self.model_buf[i * size:i * size + expect] = f.payload
        self.have.add(i)
        now = self.last_progress
        if self.last_chunk is not None:
            gap = now - self.last_chunk
            self.gap = gap if self.gap is None else 0.875 * self.gap + 0.125 * gap
            self.ask_quiet = min(ASK_MAX, max(ASK_MIN, QUIET_GAPS * self.gap))
        self.last_chunk = now
        self.since_ask += 1
        if self.since_ask >= MODEL_WINDOW and len(self.have) < n:
            self._ask_model()   # the whole window arrived: ask for the next one now
        if len(self.have) == n:
            self._model_complete()

    def _model_complete(self) -> None:
        if self.offer.down_codec == wire.CODEC_FLOAT32:
            params = np.frombuffer(self.model_buf, dtype="<f4")   # trained in place: no second copy of the model
        else:
            try:   # the model as the aggregator's C kernel decoded the same bytes
                params = transfer.decode_download(self.model_buf, self.offer.n_params, self.offer.down_codec)
            except ValueError as exc:   # a message that breaks its reader rule: counted, fetched again
                self.rejected["bad_download"] = self.rejected.get("bad_download", 0) + 1
                log.warning("round %d: %s; downloading again", self.round, exc)
                self.have.clear()
                self._ask_model()
                return
        if wire.model_hash(params) != self.offer.model_hash:
            log.warning("round %d: model hash mismatch, downloading again", self.round)
            self.have.clear()
            self._ask_model()
            return
        if not np.isfinite(params).all():
            self._send(session.ERROR, wire.ErrorMsg(session.E_MODEL, f"device {self.id}: the model of round "
                                                    f"{self.round} holds NaN or Inf").pack())
            self._fail(f"round {self.round}: the aggregator sent a model with NaN or Inf weights; stopping "
                       f"(start the device again once the aggregator serves a finite model)")
            return
        self.state = "training"
        self.pending_training = params   # trained by the loop, after this datagram batch

    def _fail(self, why: str) -> None:
        """Stop with one line saying why (run_command then exits with 2): never a silent dead loop."""
        log.error("%s", why)
        self.failed = why
        self.state = "failed"
        self.finished = True

    def _train(self, round_id: int, offer: wire.Offer, params: np.ndarray) -> None:
        if offer.fixed_scale > 0:
            return self._train_secure(round_id, offer, params)
        t0 = time.perf_counter()
        update, res = self._local_update(round_id, offer, params)
        if self.round != round_id or self.state != "training":
            return  # the round moved on
        self.update = update
        # n_k is the size of the local data set, as announced in HELLO (res.n_samples counts every
        # epoch's passes); the aggregator refuses a RESULT whose n_k differs from the HELLO's
        self.result = wire.Result(n_samples=len(self.y), n_clients=1, loss=float(res.loss),
                                  steps=int(res.steps), update_seed=update.seed, update_flags=update.flags,
                                  update_chunks=offer.update_chunks).pack()
        log.info("round %d: trained on %d samples in %.2f s (loss %.4f), uploading", round_id, res.n_samples,
                 time.perf_counter() - t0, res.loss)
        self.state = "uploading"
        self._send(session.RESULT, self.result)
        self.last_progress = self.last_heard = self.upload_started = time.monotonic()   # the silence clock starts now

    def _local_update(self, round_id: int, offer: wire.Offer, params: np.ndarray):
        """Local SGD and the offer's encoding, seeded as simulate seeds client k = this device id."""
        res = self._local_delta(round_id, offer, params)
        _, feedback = rounding_of(offer.codec_flags)
        if feedback and self.residual is None:
            self.residual = np.zeros_like(params)
        update = transfer.encode_update(offer.up_codec, offer.codec_flags, params,
                                        seed=derive_seed(offer.seed, round_id, self.id, 2),
                                        residual=self.residual if feedback else None)
        return update, res

    def _local_delta(self, round_id: int, offer: wire.Offer, params: np.ndarray):
        """Local SGD from params; params (the download buffer) becomes trained - global in place,
        without a copy of the model (local_sgd's delta=True)."""
        return self.train.local_sgd(self.model, params, self.x, self.y, epochs=offer.epochs, batch_size=offer.batch_size,
                                    lr=offer.lr, momentum=self.momentum, prox_mu=offer.prox_mu,
                                    global_params=params if offer.prox_mu > 0 else None,
                                    weights=self.weights, seed=derive_seed(offer.seed, round_id, self.id, 1), delta=True)

    def _send_chunks(self, indices) -> None:
        n = self.offer.update_chunks
        for i in indices:
            self._send(session.UPDATE_CHUNK, wire.update_chunk(self.update.blocks, i, self.offer.up_codec),
                       chunk=(i, n))

    def _pump(self) -> None:
        """Send new update chunks while fewer than UPLOAD_WINDOW are unacknowledged (ACK-clocked,
        so a fleet's uploads do not overflow the aggregator's socket queue)."""
        n = self.offer.update_chunks
        start = self.next_chunk
        while self.next_chunk < n and self.next_chunk - len(self.acked) < UPLOAD_WINDOW:
            self.next_chunk += 1
        self._send_chunks(range(start, self.next_chunk))

    def _on_update_ack(self, ack: wire.Ack) -> None:
        self.last_progress = time.monotonic()
        missing = ack.missing()
        if not missing:
            log.info("round %d: update delivered", self.round)
            self._round_done()
            return
        self.upload_wait = UPLOAD_ACK_WAIT
        self.acked = ack.received
        if self.resend_on_ack:   # the answer to our RESULT: send again what it misses, once
            self.resend_on_ack = False
            self._send_chunks([c for c in missing if c < self.next_chunk])
        self._pump()

    def _round_done(self) -> None:
        self.state = "done"
        self.rounds_done += 1
        if self.max_rounds is not None and self.rounds_done >= self.max_rounds:
            self.finished = True

    # -- secure aggregation (fedtiny.net.secagg_round): the device follows the aggregator's SETUP --
    def _secure(self):
        if self.secagg is None:
            from . import secagg_round
            self.secagg = secagg_round.DeviceSecAgg(
                self.id, lambda t, payload, chunk: self._send(t, payload, chunk, round_id=self.secagg.round))
        return self.secagg

    def _train_secure(self, round_id: int, offer: wire.Offer, params: np.ndarray) -> None:
        """A secure round (the offer's fixed_scale is the grid's clip bound): the float32 delta goes
        to the SecAgg driver, which masks and uploads it once the share stage is done; no RESULT."""
        from . import secagg_round
        t0 = time.perf_counter()
        res = self._local_delta(round_id, offer, params)
        if self.round != round_id or self.state != "training":
            return
        log.info("round %d: trained on %d samples in %.2f s (loss %.4f), secure upload", round_id, res.n_samples,
                 time.perf_counter() - t0, res.loss)
        self.state = "secure"
        self.last_progress = self.last_heard = self.upload_started = time.monotonic()
        self._secure().set_delta(round_id, params, secagg_round.device_round_key(offer.seed, round_id, self.id),
                                 self.last_progress)

    def _on_error(self, round_id: int, err: wire.ErrorMsg) -> None:
        if err.code == session.E_MODEL and self.mismatch:
            self.mismatch += f"; the aggregator says: {err.text}"
            self.finished = True
        elif err.code == session.E_FINISHED:
            log.info("the aggregator finished training")
            self.finished = True
        elif err.code == session.E_BUSY and self.state == "uploading":
            self.last_progress = time.monotonic() + busy_backoff()   # back off, then retry
        elif err.code == session.E_REFUSED:
            # its HELLO broke the aggregator's bounds (e.g. more samples than --max-samples):
            # asking again would be refused again
            self._fail(f"the aggregator refused this device: {err.text}")
        elif err.code in (session.E_ROUND_CLOSED, session.E_NOT_SELECTED, session.E_TOO_STALE) and round_id == self.round:
            log.debug("round %d: %s", round_id, err.text)
            if self.state in ("downloading", "training", "uploading", "secure"):
                self.state = "waiting"
        else:
            log.info("aggregator: error %d: %s", err.code, err.text)

    # -- timers ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.state == "refused":
            if now - self.last_progress > REFUSED_WAIT:
                self.finished = True
            return
        silent_limit = SILENT_SECONDS
        if self.state in ("uploading", "secure") and self.offer is not None:
            silent_limit = max(SILENT_SECONDS, self.offer.deadline_ms / 1000 - (self.upload_started - self.offered_at))
        if self.state not in ("joining", "training") and now - self.last_heard > silent_limit:
            # the aggregator went away, or restarted (its frames now name another epoch): join again
            log.info("the aggregator went silent: joining again")
            self.kept_round = self.round
            self._join()
        if self.state == "joining":
            if now - self.last_sent >= self.hello_every:
                self._send_join()
                if now - self.last_heard > SILENT_SECONDS:
                    self.hello_every = min(HELLO_MAX, self.hello_every * 2)
        elif self.state in ("waiting", "done"):
            if now - self.last_sent >= self.hello_every:
                self._send(session.HELLO, self._hello(), round_id=0)
        elif self.state == "downloading" and now - self.last_progress > self.ask_quiet:
            self._ask_model(timeout=True)
        elif self.state == "secure":
            self.secagg.tick(now)
        elif self.state == "uploading" and now - self.last_progress > self.upload_wait:
            self._send(session.RESULT, self.result)
            self.resend_on_ack = True
            self.last_progress = now
            self.upload_wait = min(UPLOAD_ACK_MAX, self.upload_wait * 2)

    def run(self, server: tuple[str, int], stop=lambda: False) -> int:
        """Serve until the aggregator says it finished, max_rounds are done, or stop() is true."""
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.connect(server)
            self.sock.setblocking(False)
            # Room for a few windows of model chunks while this process waits for the CPU (the
            # kernel caps the request at net.core.rmem_max).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            self._join()
            log.info("device %d: %d samples, model %d parameters, aggregator %s:%d", self.id, len(self.y),
                     self.model.n_params, *server)
            while not stop() and not self.finished:
                self.tick(time.monotonic())
                if self.pending_training is not None:
                    params, self.pending_training = self.pending_training, None
                    try:
                        self._train(self.round, self.offer, params)
                    except Exception as exc:  # diverged, an offer it cannot train, out of memory
                        self._fail(f"round {self.round}: local training failed: {exc}; stopping "
                                   f"(check --data and the aggregator's --lr)")
                    del params   # the round's model buffer (now its delta): freed before the next download
                    continue
                if select.select([self.sock], [], [], TICK)[0]:
                    self._drain()
        finally:
            self.sock.close()
        return self.rounds_done

    def _drain(self) -> None:
        for _ in range(256):   # bounded: timers still run under a flood
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # ICMP errors surface on a connected socket
                log.debug("socket error: %s", exc)
                return
            self.datagram_received(data, None)
            if self.pending_training is not None:
                return


# --- command line ---------------------------------------------------------------------------

HELP = "run a device: join the aggregator, train on local data, send compressed updates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the aggregator (or a bridge)")
    p.add_argument("--device-id", type=int, required=True, metavar="ID")
    p.add_argument("--key", required=True, metavar="FILE", help="keys file holding this device's 'ID hexkey' line")
    p.add_argument("--data", required=True, metavar="NPZ", help="local data: arrays x and y")
    p.add_argument("--model", default="mlp:64-32-10", help="a spec or a float FILE.tflite; must match the aggregator's (default %(default)s)")
    p.add_argument("--backbone", default=None, metavar="FILE.tflite",
                   help="frozen .tflite feature extractor: x is turned into features once and --model is the "
                        "dense head trained and federated on them (mlp:<features>-...-<classes>)")
    p.add_argument("--momentum", type=float, default=0.0, help="local SGD momentum")
    p.add_argument("--weights", default="float32", choices=("float32", "int8"), help="local training weights")
    p.add_argument("--rounds", type=int, default=None, help="stop after taking part in this many rounds")
    p.add_argument("--verbose", "-v", action="store_true")


def run_command(args: argparse.Namespace) -> int:
    from .. import model as model_mod
    from . import keys
    setup_logging(args.verbose)
    server = parse_hostport(args.server, "--server")
    key = keys.load_device_key(args.key, args.device_id)
    model = model_mod.build(args.model)
    if args.backbone is not None:
        from .. import tflite
        x, y = load_data(args.data, None)
        x = tflite.extract_features(args.backbone, x)
        if x.shape[1] != int(np.prod(model.input_shape)):
            raise ValueError(f"--backbone {args.backbone} gives {x.shape[1]} features, --model {args.model} takes "
                             f"{int(np.prod(model.input_shape))} (use --model {tflite.head_spec(x.shape[1])})")
        check_features(f"{args.data} through {args.backbone}", x)
        y = check_labels(args.data, y, model.n_classes)
    else:
        x, y = load_data(args.data, model)
    device = Device(args.device_id, key, model, x, y, momentum=args.momentum, weights=args.weights,
                    max_rounds=args.rounds)

    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))
    done = device.run(server, stop=lambda: bool(stopping))
    if device.mismatch:
        raise ValueError(f"device {args.device_id}: {device.mismatch}: start the client with the aggregator's --model")
    print(f"device {args.device_id}: took part in {done} round(s)", file=sys.stderr)
    return 2 if device.failed else 0
