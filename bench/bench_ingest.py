"""Aggregator ingest over loopback UDP: N simulated devices upload one 2nn int8 update each.

The aggregator is a real `fedtiny aggregate` process (its peak RSS is read from
/proc/PID/status VmHWM); one sender process plays all N devices on one socket (every frame
sealed with its device's session key, the real protocol: join HELLO, WELCOME, HELLO, OFFER,
RESULT, update chunks, ACKs, resending what an ACK lists as missing). Devices skip the model download: this measures ingest.

    pytest bench/bench_ingest.py --benchmark-only -s     # 100 and 1,000 devices
The numbers (updates/s, MB/s, round time, peak RSS) are in each benchmark's extra_info and
printed; under --benchmark-disable it runs a 4-device smoke round.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fedtiny import codec
from fedtiny.net import keys, state, wire

MODEL, N_PARAMS = "2nn", 199_210
SLOTS = 8
WINDOW = 16          # update chunks in flight per device (8 x 16 x 1.1 KB fits a default socket buffer)
N_SAMPLES = 100


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _Dev:
    __slots__ = ("id", "psk", "key", "nonce", "ctx", "seq", "round", "next", "got", "last", "resend", "done",
                 "started")

    def __init__(self, device_id: int, key: bytes):
        self.id, self.psk, self.key = device_id, key, None     # key: the session key, once welcomed
        self.nonce, self.ctx = os.urandom(wire.NONCE_BYTES), {}
        self.seq = 1
        self.round = 0
        self.next = 0
        self.got: frozenset = frozenset()
        self.last = 0.0
        self.resend = True
        self.done = False
        self.started = False


class FleetSender(asyncio.DatagramProtocol):
    """All devices on one socket; at most `slots` upload at once (the aggregator's staging)."""

    def __init__(self, fleet_keys: dict[int, bytes], chunks: list[bytes], server):
        self.devs = {d: _Dev(d, k) for d, k in fleet_keys.items()}
        self.chunks = chunks
        self.server = server
        self.result = wire.Result(n_samples=N_SAMPLES, loss=1.0, steps=10, update_flags=1,
                                  update_chunks=len(chunks)).pack()
        self.queue = sorted(self.devs)
        self.active: set[int] = set()
        self.all_done = asyncio.Event()
        self.n_done = 0
        self.t_first = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

    def _send(self, dev: _Dev, msg_type, payload=b"", chunk=(0, 1), round_id=None):
        dev.seq += 1
        self.transport.sendto(wire.encode(msg_type, dev.id, dev.round if round_id is None else round_id, dev.seq,
                                          payload, dev.key, chunk=chunk, **dev.ctx), self.server)

    def hello_all(self):
        for dev in self.devs.values():
            if dev.key is None:      # join: HELLO with the device's nonce, pre-shared key, session 0
                self.transport.sendto(wire.encode(wire.MsgType.HELLO, dev.id, 0, 0, wire.Hello(
                    n_samples=N_SAMPLES, nonce=dev.nonce).pack(), dev.psk), self.server)
            elif dev.round == 0:
                self._send(dev, wire.MsgType.HELLO, wire.Hello(n_samples=N_SAMPLES).pack(), round_id=0)

    def _activate(self, now):
        while len(self.active) < SLOTS and self.queue:
            dev = self.devs[self.queue[0]]
            if dev.round == 0:
                return   # its offer has not arrived yet
            self.queue.pop(0)
            self.active.add(dev.id)
            dev.started, dev.last, dev.resend = True, now, True
            if self.t_first is None:
                self.t_first = time.perf_counter()
            self._send(dev, wire.MsgType.RESULT, self.result)

    def _pump(self, dev: _Dev):
        n = len(self.chunks)
        while dev.next < n and dev.next - len(dev.got) < WINDOW:
            self._send(dev, wire.MsgType.UPDATE_CHUNK, self.chunks[dev.next], chunk=(dev.next, n))
            dev.next += 1

    def datagram_received(self, data, addr):
        try:
            dev = self.devs[wire.peek(data).device_id]
            f = wire.decode(data, dev.key or dev.psk, None)
        except (wire.FrameError, KeyError):
            return
        now = time.monotonic()
        if f.type == wire.MsgType.WELCOME and dev.key is None:
            w = wire.Welcome.unpack(f.payload)
            if w.device_nonce == dev.nonce:
                dev.key, dev.ctx, dev.seq = wire.session_key(dev.psk, dev.id, w), dict(
                    session=w.session, epoch=w.epoch, run=w.run), 0
                self._send(dev, wire.MsgType.HELLO, wire.Hello(n_samples=N_SAMPLES).pack(), round_id=0)
        elif f.type == wire.MsgType.OFFER and dev.round == 0:
            dev.round = f.round
            self._activate(now)
        elif f.type == wire.MsgType.ACK and dev.id in self.active:
            ack = wire.Ack.unpack(f.payload)
            dev.last = now
            dev.got = ack.received
            if len(ack.received) == len(self.chunks):
                dev.done = True
                self.active.discard(dev.id)
                self.n_done += 1
                if self.n_done == len(self.devs):
                    self.all_done.set()
                self._activate(now)
                return
            if dev.resend:   # the answer to a RESULT sent after a timeout: resend what was lost
                dev.resend = False
                for i in ack.missing():
                    if i < dev.next:
                        self._send(dev, wire.MsgType.UPDATE_CHUNK, self.chunks[i], chunk=(i, len(self.chunks)))
            self._pump(dev)
        elif f.type == wire.MsgType.ERROR and dev.id in self.active:
            if wire.ErrorMsg.unpack(f.payload).code == 100:   # busy: back in the queue
                self.active.discard(dev.id)
                self.queue.append(dev.id)

    def tick(self, now):
        for d in list(self.active):
            dev = self.devs[d]
            if now - dev.last > 0.2:
                dev.last, dev.resend = now, True
                self._send(dev, wire.MsgType.RESULT, self.result)
        self._activate(now)


async def _run(n_devices: int, tmp: str) -> dict:
    port = _free_port()
    os.makedirs(tmp, exist_ok=True)
    keyfile = os.path.join(tmp, "keys")
    keys.write_keys(keyfile, keys.generate(range(n_devices), nbytes=16))
    fleet_keys = keys.load_keys(keyfile)
    state_dir = os.path.join(tmp, "state")
    agg = subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}",
                            "--model", MODEL, "--rounds", "1", "--min-clients", str(n_devices),
                            "--round-timeout", "300", "--keys", keyfile, "--state", state_dir, "--dataset", "none",
                            "--slots", str(SLOTS)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    delta = (np.random.default_rng(0).standard_normal(N_PARAMS) * 0.01).astype(np.float32)
    update = codec.encode(delta, rounding="stochastic", seed=1)
    chunks = [wire.update_chunk(update.blocks, i) for i in range(wire.update_chunks(N_PARAMS))]
    loop = asyncio.get_running_loop()
    sender = FleetSender(fleet_keys, chunks, ("127.0.0.1", port))
    transport, _ = await loop.create_datagram_endpoint(lambda: sender, local_addr=("127.0.0.1", 0))
    hwm = 0
    try:
        last_hello = 0.0
        deadline = time.monotonic() + 600
        while agg.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            if now - last_hello > 0.5 and any(d.round == 0 for d in sender.devs.values()):
                sender.hello_all()
                last_hello = now
            sender.tick(now)
            hwm = max(hwm, _vm_hwm_kib(agg.pid) or 0)
            await asyncio.sleep(0.02)
        t_end = time.perf_counter()
    finally:
        transport.close()
        if agg.poll() is None:
            agg.kill()
        agg.wait()
    assert agg.returncode == 0, f"aggregator exited with {agg.returncode}"
    row = state.load(state_dir).metrics[0]
    assert row["clients"] == n_devices and row["samples"] == n_devices * N_SAMPLES
    round_s = row["round_s"]
    nbytes = n_devices * codec.wire_size(N_PARAMS)
    return {"devices": n_devices, "round_s": round_s, "updates_per_s": n_devices / round_s,
            "update_mb_per_s": nbytes / round_s / 1e6, "bytes_up": row["bytes_up"],
            "sender_s": t_end - (sender.t_first or t_end), "aggregator_peak_rss_mib": hwm / 1024,
            "rejected": row["rejected"]}


@pytest.mark.parametrize("n_devices", [100, 1000])
def test_ingest(benchmark, n_devices, tmp_path):
    n = n_devices if not benchmark.disabled else 4
    out = {}

    def run():
        out.update(asyncio.run(_run(n, str(tmp_path / f"run{len(os.listdir(tmp_path))}"))))
    benchmark.group = "aggregator ingest (2nn int8 updates, loopback UDP)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    print(f"\n{n} devices: round {out['round_s']:.2f} s, {out['updates_per_s']:.1f} updates/s, "
          f"{out['update_mb_per_s']:.1f} MB/s of int8 updates, aggregator peak RSS {out['aggregator_peak_rss_mib']:.1f} MiB, "
          f"rejected {out['rejected']}")
