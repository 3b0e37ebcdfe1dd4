"""Helpers for the network tests: an aggregator in a background thread, client processes, the
simulation oracle, and a hand-driven device on a plain UDP socket."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from fedtiny import bounds, rounds, simulate
from fedtiny.seeds import derive_seed
from fedtiny.net import keys, wire
from fedtiny.net.aggregator import AggregateConfig, Aggregator
from fedtiny.net.demo import client_command, write_client_data

MODEL = "mlp:64-32-10"
CLIENT_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """A keys file and one data file per client, partitioned exactly as simulate partitions."""

    def __init__(self, directory, clients: int, seed: int = 0):
        self.dir = str(directory)
        self.clients = clients
        self.seed = seed
        self.keyfile = os.path.join(self.dir, "keys")
        keys.write_keys(self.keyfile, keys.generate(range(clients + 2)))   # two spare ids for hand-driven devices
        self.keys = keys.load_keys(self.keyfile)
        self.data = write_client_data(self.dir, "digits", clients, seed=seed)

    def config(self, **kw) -> AggregateConfig:
        base = dict(listen="127.0.0.1:0", model=MODEL, rounds=3, min_clients=self.clients, round_timeout=20.0,
                    keys=self.keyfile, state=os.path.join(self.dir, "state"), dataset="digits", lr=0.05,
                    batch=10, codec="int8-stochastic", seed=self.seed)
        base.update(kw)
        return AggregateConfig(**base)

    def start_clients(self, server: str, ids=None) -> list[subprocess.Popen]:
        ids = range(self.clients) if ids is None else ids
        return [subprocess.Popen(client_command(server, k, self.keyfile, self.data[k], MODEL), env=CLIENT_ENV, cwd=self.dir,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in ids]


def stop_all(procs, timeout: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stderr:
            p.stderr.close()


class AggregatorThread:
    """An Aggregator serving on its own event loop in a background thread."""

    def __init__(self, cfg: AggregateConfig):
        self.agg = Aggregator(cfg, out=open(os.devnull, "w"))
        self._ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self._ready.set()
            self.done.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        await self.agg.serve(self.stop, ready=lambda addr: (setattr(self, "address", addr), self._ready.set()))

    def __enter__(self) -> "AggregatorThread":
        self.thread.start()
        assert self._ready.wait(10), "aggregator did not start"
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc) -> None:
        if not self.done.is_set():
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.agg.out.close()

    @property
    def server(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def wait(self, timeout: float) -> None:
        assert self.done.wait(timeout), f"aggregator did not finish in {timeout} s (round {self.agg.server.round_id})"
        if self.error:
            raise self.error


def simulate_oracle(clients: int, n_rounds: int, seed: int = 0, codec: str = "int8-stochastic", **extra):
    """(final global weights, per-round rows) of `fedtiny simulate` with the network tests' settings
    (extra: more SimConfig fields, e.g. secagg=True)."""
    servers = []
    real_init = rounds.Server.__init__

    def capture(self, *a, **kw):
        real_init(self, *a, **kw)
        servers.append(self)
    rounds.Server.__init__ = capture
    try:
        fields = dict(dataset="digits", model=MODEL, clients=clients, fraction=1.0, rounds=n_rounds,
                      lr=0.05, batch=10, codec=codec, seed=seed,
                      # the aggregator's default bounds: the same code clips in both
                      max_samples=bounds.DEFAULT_MAX_SAMPLES, clip_norm=bounds.DEFAULT_CLIP_NORM)
        cfg = simulate.SimConfig(**{**fields, **extra})
        result = simulate.run(cfg)
    finally:
        rounds.Server.__init__ = real_init
    return servers[0].params.copy(), result.rounds


class HandDevice:
    """A device driven step by step on a blocking UDP socket (to send exactly the frames a test wants).

    join() runs the handshake (join HELLO with a nonce -> WELCOME -> session key); frame() then
    builds frames of that session, with any field overridden."""

    def __init__(self, address, device_id: int, key: bytes):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self.sock.connect(tuple(address))
        self.id, self.psk = device_id, key
        self.key = key                   # the session key once joined
        self.welcome = None
        self.seq = 1

    def close(self) -> None:
        self.sock.close()

    def join_hello(self, nonce: bytes, n_samples: int = 100) -> bytes:
        return wire.encode(wire.MsgType.HELLO, self.id, 0, 0, wire.Hello(n_samples=n_samples, nonce=nonce).pack(),
                           self.psk)

    def join(self, n_samples: int = 100, timeout: float = 5.0) -> wire.Welcome:
        """Join HELLOs until the WELCOME for their nonce; then this object speaks in that session."""
        nonce = os.urandom(wire.NONCE_BYTES)
        hello = self.join_hello(nonce, n_samples)
        self.key = self.psk
        end = time.monotonic() + timeout
        self.send(hello)
        while True:   # a WELCOME for an earlier join (a replayed one) may still be on its way: skip it
            w = wire.Welcome.unpack(self.expect(wire.MsgType.WELCOME, end - time.monotonic(), resend=hello).payload)
            if w.device_nonce == nonce:
                break
        self.welcome, self.key, self.seq = w, wire.session_key(self.psk, self.id, w), 0
        return w

    def hello(self, n_samples: int = 100) -> bytes:
        """An in-session HELLO (joins first when there is no session)."""
        if self.welcome is None:
            self.join(n_samples)
        return self.frame(wire.MsgType.HELLO, 0, wire.Hello(n_samples=n_samples).pack())

    def frame(self, msg_type, round_id, payload=b"", chunk=(0, 1), *, key=None, device_id=None, **fields) -> bytes:
        self.seq += 1
        w = self.welcome
        ctx = dict(session=w.session, epoch=w.epoch, run=w.run) if w is not None else {}
        ctx.update(fields)
        return wire.encode(msg_type, self.id if device_id is None else device_id, round_id, self.seq, payload,
                           key or self.key, chunk=chunk, **ctx)

    def send(self, data: bytes) -> bytes:
        self.sock.send(data)
        return data

    def expect(self, msg_type, timeout: float = 5.0, resend=None) -> wire.Frame:
        """The next frame of msg_type; on each 0.2 s of silence, send `resend` (bytes, or a
        callable making a fresh frame)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                f = wire.decode(self.sock.recv(2048), self.key, None)
            except socket.timeout:
                if resend is not None:
                    self.sock.send(resend() if callable(resend) else resend)
                continue
            except wire.FrameError:    # e.g. a frame of a session this device has left: dropped
                continue
            if f.type == msg_type:
                return f
        raise AssertionError(f"no {wire.MsgType(msg_type).name} from the aggregator in {timeout} s")


def client_delta(net_model, w: np.ndarray, data_path: str, round_id: int, device: int, *, seed: int = 0,
                 lr: float = 0.05, batch: int = 10) -> np.ndarray:
    """What `fedtiny client` device `device` uploads from model w in round `round_id` (one epoch),
    retrained here: its delta, float32."""
    from fedtiny import train
    z = np.load(data_path)
    params = w.copy()
    train.local_sgd(net_model, params, z["x"].astype(np.float32), z["y"], epochs=1, batch_size=batch, lr=lr,
                    seed=derive_seed(seed, round_id, device, 1))
    return (params - w).astype(np.float32)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def client_logs(procs) -> str:
    return "\n".join((p.stderr.read() if p.stderr and p.poll() is not None else "") for p in procs)


__all__ = ["Fleet", "AggregatorThread", "HandDevice", "simulate_oracle", "stop_all", "free_udp_port", "wait_for",
           "np", "sys", "time"]


def hand_join(dev: HandDevice, n_samples: int = 100, offer_timeout: float = 5.0):
    """Handshake, then in-session HELLO until an OFFER comes (within offer_timeout seconds), then
    download the model: (round, offer, global weights)."""
    def hello():
        return dev.hello(n_samples)
    dev.send(hello())
    f = dev.expect(wire.MsgType.OFFER, offer_timeout, resend=hello)
    offer = wire.Offer.unpack(f.payload)
    n_chunks = wire.model_chunks(offer.n_params)
    dev.send(dev.frame(wire.MsgType.ACK, f.round, wire.Ack.for_chunks(wire.MsgType.MODEL_CHUNK, [], n_chunks).pack()))
    model = bytearray(4 * offer.n_params)
    got = set()
    while len(got) < n_chunks:
        c = dev.expect(wire.MsgType.MODEL_CHUNK)
        start = c.chunk_index * wire.MODEL_CHUNK_BYTES
        model[start:start + len(c.payload)] = c.payload
        got.add(c.chunk_index)
    w0 = np.frombuffer(bytes(model), "<f4").astype(np.float32)
    assert wire.model_hash(w0) == offer.model_hash
    return f.round, offer, w0


def hand_result(dev: HandDevice, round_id: int, n_samples: int, n_chunks: int) -> None:
    result = dev.frame(wire.MsgType.RESULT, round_id, wire.Result(n_samples=n_samples, loss=1.0, steps=10,
                                                                   update_chunks=n_chunks).pack())
    dev.expect(wire.MsgType.ACK, resend=dev.send(result))


def hand_chunk(dev: HandDevice, round_id: int, update, index: int, n_chunks: int) -> bytes:
    return dev.send(dev.frame(wire.MsgType.UPDATE_CHUNK, round_id, wire.update_chunk(update.blocks, index),
                              chunk=(index, n_chunks)))


class SessionKeys:
    """Every device's keys as a relay in the middle learns them: the pre-shared key for join HELLOs
    and WELCOMEs, and each session's key from the WELCOME that opens it (wire.session_key)."""

    def __init__(self, device_keys: dict[int, bytes]):
        self.psks = device_keys
        self.sessions: dict[tuple[int, int], bytes] = {}

    def decode(self, data: bytes) -> wire.Frame | None:
        """The authentic frame (no replay check), or None; learns the session a WELCOME opens."""
        try:
            h = wire.peek(data)
            psk = self.psks.get(h.device_id)
            key = psk if h.type == wire.MsgType.WELCOME or h.session == 0 else self.sessions.get((h.device_id, h.session))
            if key is None:
                return None
            f = wire.decode(data, key, None)
        except wire.FrameError:
            return None
        if f.type == wire.MsgType.WELCOME:
            w = wire.Welcome.unpack(f.payload)
            self.sessions[(f.device_id, w.session)] = wire.session_key(psk, f.device_id, w)
        return f

    def encode(self, f: wire.Frame, seq: int) -> bytes:
        """f again under a new sequence number, tagged with its session's key."""
        key = self.sessions[(f.device_id, f.session)]
        return wire.encode(f.type, f.device_id, f.round, seq, f.payload, key, chunk=f.chunk, session=f.session,
                           epoch=f.epoch, run=f.run)


class WireCapture:
    """What really crossed the wire, decoded with the devices' keys (a LossyRelay `tap`): each
    round's model as the aggregator sent it down (MODEL_CHUNK), each device's n_k (RESULT) and its
    int8 update (UPDATE_CHUNK) as the device sent it up, before any loss.

    The independent oracle of the network tests: FedAvg computed from these bytes in float64 numpy,
    w_{r+1} = w_r + sum_k n_k * dequant(update_k) / sum_k n_k, with a dequantizer written here
    (d * q per 128-value block) and no fedtiny code beyond the frame decoder."""

    def __init__(self, device_keys: dict[int, bytes]):
        self.keys = SessionKeys(device_keys)
        self.lock = threading.Lock()
        self.n_params: int | None = None
        self.models: dict[int, dict[int, bytes]] = {}          # round -> chunk index -> payload
        self.n_samples: dict[tuple[int, int], int] = {}         # (round, device) -> n_k
        self.chunks: dict[tuple[int, int], dict[int, bytes]] = {}   # (round, device) -> index -> payload
        self.n_update_chunks: int | None = None
        self.undecodable = 0

    def __call__(self, direction: str, data: bytes) -> None:
        with self.lock:
            f = self.keys.decode(data)
            if f is None:
                self.undecodable += 1
                return
            if direction == "down" and f.type == wire.MsgType.OFFER:
                self.n_params = wire.Offer.unpack(f.payload).n_params
            elif direction == "down" and f.type == wire.MsgType.MODEL_CHUNK:
                self._same(self.models.setdefault(f.round, {}), f.chunk_index, f.payload)
            elif direction == "up" and f.type == wire.MsgType.RESULT:
                n = wire.Result.unpack(f.payload).n_samples
                assert self.n_samples.setdefault((f.round, f.device_id), n) == n, "n_k changed within a round"
            elif direction == "up" and f.type == wire.MsgType.UPDATE_CHUNK:
                self.n_update_chunks = f.chunk_count
                self._same(self.chunks.setdefault((f.round, f.device_id), {}), f.chunk_index, f.payload)

    @staticmethod
    def _same(table: dict, index: int, payload: bytes) -> None:
        assert table.setdefault(index, payload) == payload, f"chunk {index} sent twice with different bytes"

    def model(self, round_id: int) -> np.ndarray:
        """The global weights the aggregator sent for round_id (float32, as on the wire)."""
        parts = self.models[round_id]
        raw = b"".join(parts[i] for i in range(len(parts)))
        assert len(raw) == 4 * self.n_params, f"round {round_id}: model incomplete on the wire"
        return np.frombuffer(raw, "<f4")

    def uploads(self, round_id: int) -> dict[int, tuple[int, np.ndarray]]:
        """device -> (n_k, dequantized update in float64) for every device that sent all its chunks."""
        out = {}
        for (r, dev), parts in self.chunks.items():
            if r != round_id or len(parts) != self.n_update_chunks:
                continue
            raw = np.frombuffer(b"".join(parts[i] for i in range(self.n_update_chunks)),
                                dtype=np.dtype([("d", "<f4"), ("q", "i1", 128)]))
            delta = (raw["d"].astype(np.float64)[:, None] * raw["q"].astype(np.float64)).ravel()[:self.n_params]
            out[dev] = (self.n_samples[(r, dev)], delta)
        return out

    def fedavg(self, round_id: int, devices=None, clip_norm: float | None = None) -> np.ndarray:
        """float64 FedAvg of round_id's uploads (of `devices`, default all complete) on its model;
        with clip_norm C, each update scaled by min(1, C / its L2 norm) first (docs/network.md)."""
        ups = self.uploads(round_id)
        if devices is not None:
            ups = {d: ups[d] for d in devices}
        assert ups, f"round {round_id}: no complete upload on the wire"
        n = sum(nk for nk, _ in ups.values())

        def clipped(delta):
            norm = float(np.sqrt(np.sum(delta * delta)))
            return delta if not clip_norm or norm <= clip_norm else delta * (clip_norm / norm)
        return self.model(round_id).astype(np.float64) + sum(nk * clipped(d) for nk, d in ups.values()) / n


def check_against_wire(capture: WireCapture, final_weights: np.ndarray, rounds_metrics: list[dict],
                       clip_norm: float | None = None, atol: float = 1e-6) -> None:
    """Every round: the next model the aggregator sent (or the final checkpoint) is FedAvg, in float64,
    of exactly the updates and n_k the devices sent, over the devices the aggregator says it used."""
    for i, row in enumerate(rounds_metrics):
        r = row["round"]
        used = row.get("contributors")
        want = capture.fedavg(r, used, clip_norm)
        if used is None:
            assert len(capture.uploads(r)) == row["clients"], (r, sorted(capture.uploads(r)), row)
        assert sum(capture.uploads(r)[d][0] for d in (used or capture.uploads(r))) == row["samples"]
        got = capture.model(r + 1) if i + 1 < len(rounds_metrics) else final_weights
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"round {r}")
