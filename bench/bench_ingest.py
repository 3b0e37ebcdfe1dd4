"""Aggregator ingest over loopback UDP: a load generator plays N devices, each uploading one 2nn
int8 update, into a real `fedtiny aggregate` process; the C receive path (--ingest c, the
default) and the Python reference path (--ingest python, today's per-datagram path) side by side.

    pytest bench/bench_ingest.py --benchmark-only -s       # 100 and 1,000 devices, both paths

The generator (this process, one socket) speaks the real protocol: join HELLO, WELCOME, in-session
HELLO, OFFER, a model ACK that says every chunk is there, then per device RESULT and update chunks
in an ACK-clocked window, resending what an ACK lists as missing. Devices skip the model download
(their model ACK is the one a device sends when its download is complete): this measures ingest. To keep the
generator from being the bottleneck on a 2-core machine, every device's frames are sealed before
the upload starts (a device that needs a resend seals afresh). Figures per run:
  - updates/s: N / (first RESULT sent .. last update acknowledged), wall clock;
  - aggregator CPU per update: the aggregator process's user+system CPU (/proc/PID/stat) from the
    first RESULT to the round's checkpoint (state.json written) / N, and 1 / that = the updates/s
    one core of this machine sustains (to the close, so that updates committed at the close are
    paid for: counted to the last ACK, the path that staged them until the close looked cheaper);
  - aggregator peak RSS (VmHWM), at 100 and at 1,000 devices.
Under --benchmark-disable (CI) it runs a 4-device smoke round of each path.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fedtiny import codec
from fedtiny.net import keys, state, wire

MODEL, N_PARAMS = "2nn", 199_210
UPLOADING = 64       # devices uploading at once (a fleet's uploads are spread in time; memory: 64 x 205 KB)
WINDOW = 32          # update chunks in flight per device (the real client's UPLOAD_WINDOW)
N_SAMPLES = 100
RESEND_S = 0.5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_at_close(pid: int, state_dir: str, budget_s: float) -> float:
    """The process's CPU seconds as soon as its round's checkpoint (state.json) is written."""
    end = time.monotonic() + budget_s
    while not os.path.exists(os.path.join(state_dir, "state.json")):
        if time.monotonic() > end:
            raise AssertionError(f"the round did not close within {budget_s} s of the last update")
        time.sleep(0.002)
    return _cpu_s(pid)


class _Dev:
    __slots__ = ("id", "psk", "key", "nonce", "ctx", "seq", "frames", "result", "next", "got", "last", "done",
                 "fresh", "round")

    def __init__(self, device_id: int, psk: bytes):
        self.id, self.psk, self.key = device_id, psk, None
        self.nonce, self.ctx = os.urandom(wire.NONCE_BYTES), {}
        self.seq, self.frames, self.result = 0, [], b""
        self.next, self.got, self.last, self.done, self.fresh, self.round = 0, 0, 0.0, False, False, 0


class LoadGenerator:
    """N devices on one socket."""

    def __init__(self, fleet_keys: dict[int, bytes], blocks, server):
        self.devs = {d: _Dev(d, k) for d, k in fleet_keys.items()}
        self.blocks = blocks
        self.n_chunks = wire.update_chunks(N_PARAMS)
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.payloads = [wire.update_chunk(blocks, i) for i in range(self.n_chunks)]
        self.result = wire.Result(n_samples=N_SAMPLES, loss=1.0, steps=10, update_flags=1,
                                  update_chunks=self.n_chunks).pack()

    def close(self):
        self.sock.close()

    def _seal(self, dev: _Dev, msg_type, payload, round_id, chunk=(0, 1)) -> bytes:
        dev.seq += 1
        return wire.encode(msg_type, dev.id, round_id, dev.seq, payload, dev.key, chunk=chunk, **dev.ctx)

    def _recv(self, timeout: float):
        if not select.select([self.sock], [], [], timeout)[0]:
            return
        for _ in range(4096):
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return
            yield data

    def _open(self, data):
        try:
            dev = self.devs[wire.peek(data).device_id]
            return dev, wire.decode(data, dev.key or dev.psk, None)
        except (wire.FrameError, KeyError):
            return None, None

    def join(self, budget_s: float) -> None:
        """Every device joins (WELCOME), has its frames sealed for round 1, and gets its OFFER."""
        end = time.monotonic() + budget_s
        last = 0.0
        while time.monotonic() < end:
            waiting = [d for d in self.devs.values() if d.round == 0]
            if not waiting:
                return
            if time.monotonic() - last > 0.5:
                last = time.monotonic()
                for i, dev in enumerate(waiting):
                    if dev.key is None:
                        hello = wire.Hello(n_samples=N_SAMPLES, nonce=dev.nonce).pack()
                        self.sock.sendto(wire.encode(wire.MsgType.HELLO, dev.id, 0, 0, hello, dev.psk), self.server)
                    else:
                        self.sock.sendto(self._seal(dev, wire.MsgType.HELLO, wire.Hello(n_samples=N_SAMPLES).pack(), 0),
                                         self.server)
                    if i % 64 == 63:
                        time.sleep(0.002)   # the aggregator answers one WELCOME per device per 50 ms
            for data in self._recv(0.05):
                dev, f = self._open(data)
                if f is None:
                    continue
                if f.type == wire.MsgType.WELCOME and dev.key is None:
                    w = wire.Welcome.unpack(f.payload)
                    if w.device_nonce == dev.nonce:
                        dev.key, dev.seq = wire.session_key(dev.psk, dev.id, w), 0
                        dev.ctx = dict(session=w.session, epoch=w.epoch, run=w.run)
                        self.sock.sendto(self._seal(dev, wire.MsgType.HELLO, wire.Hello(n_samples=N_SAMPLES).pack(), 0),
                                         self.server)
                elif f.type == wire.MsgType.OFFER and dev.key is not None and dev.round != f.round:
                    dev.round = f.round
                    # The model ACK a device sends when its download is complete (every chunk
                    # received): without it the aggregator offers the round again every 0.5 s to
                    # a device that never asked for the model, which real devices do not cause.
                    n_model = wire.model_chunks(wire.Offer.unpack(f.payload).n_params)
                    have = wire.Ack.pack_flags(wire.MsgType.MODEL_CHUNK, np.ones(n_model, dtype=bool))
                    self.sock.sendto(self._seal(dev, wire.MsgType.ACK, have, f.round), self.server)
                    self._seal_all(dev, f.round)
        raise AssertionError(f"{sum(d.round == 0 for d in self.devs.values())} devices got no OFFER")

    def _seal_all(self, dev: _Dev, round_id: int) -> None:
        dev.result = self._seal(dev, wire.MsgType.RESULT, self.result, round_id)
        dev.frames = [self._seal(dev, wire.MsgType.UPDATE_CHUNK, p, round_id, (i, self.n_chunks))
                      for i, p in enumerate(self.payloads)]

    def _send_chunks(self, dev: _Dev, indices) -> None:
        for i in indices:
            frame = dev.frames[i] if not dev.fresh else self._seal(
                dev, wire.MsgType.UPDATE_CHUNK, self.payloads[i], dev.round, (i, self.n_chunks))
            self.sock.sendto(frame, self.server)

    def upload(self, budget_s: float, shuffled: bool = False) -> tuple[float, float]:
        """All updates, UPLOADING devices at a time, in device-id order (or shuffled):
        (t_first_send, t_last_ack)."""
        queue = sorted(self.devs)
        if shuffled:
            queue = [int(d) for d in np.random.default_rng(1).permutation(queue)]
        active: dict[int, _Dev] = {}
        t0 = time.perf_counter()
        end = time.monotonic() + budget_s
        done = 0
        while done < len(self.devs):
            now = time.monotonic()
            if now > end:
                raise AssertionError(f"{len(self.devs) - done} uploads unfinished after {budget_s} s")
            while len(active) < UPLOADING and queue:
                dev = self.devs[queue.pop(0)]
                active[dev.id] = dev
                dev.last = now
                self.sock.sendto(dev.result, self.server)
            for dev in list(active.values()):
                if now - dev.last > RESEND_S:     # nothing heard: seal afresh (the old seqs may be spent)
                    dev.fresh, dev.last = True, now
                    self.sock.sendto(self._seal(dev, wire.MsgType.RESULT, self.result, dev.round), self.server)
            for data in self._recv(0.01):
                dev, f = self._open(data)
                if f is None or dev.id not in active:
                    continue
                if f.type == wire.MsgType.ERROR and wire.ErrorMsg.unpack(f.payload).code == 100:   # busy
                    dev.last = time.monotonic() - RESEND_S + 0.05
                    continue
                if f.type != wire.MsgType.ACK:
                    continue
                ack = wire.Ack.unpack(f.payload)
                dev.last = time.monotonic()
                if len(ack.received) == self.n_chunks:
                    del active[dev.id]
                    done += 1
                    continue
                if dev.next > 0:   # chunks sent that this ACK does not list and that are old: lost
                    lost = [i for i in ack.missing() if i < dev.next - WINDOW]
                    self._send_chunks(dev, lost)
                dev.got = len(ack.received)
                start = dev.next
                dev.next = min(self.n_chunks, max(dev.next, dev.got + WINDOW))
                self._send_chunks(dev, range(start, dev.next))
        return t0, time.perf_counter()


# The variants side by side: "c" (the C receive path; complete updates folded into the sum in
# device-id order as soon as the lower ids are in), "c-staged" (the same, but complete updates
# wait staged until the round closes: the path before), "c-shuffled" ("c" with the devices
# uploading in a random order: the fold's worst case), "python" (the Python per-datagram path).
STAGED = ("import sys; from fedtiny.net import ingest; ingest.FOLD_IN_ID_ORDER = False; "
          "from fedtiny.cli import main; sys.exit(main(sys.argv[1:]))")


def run_ingest(n_devices: int, tmp: str, ingest: str) -> dict:
    os.makedirs(tmp, exist_ok=True)
    keyfile = os.path.join(tmp, "keys")
    keys.write_keys(keyfile, keys.generate(range(n_devices), nbytes=16))
    fleet_keys = keys.load_keys(keyfile)
    state_dir = os.path.join(tmp, "state")
    port = _free_port()
    variant, path = ingest, ingest.split("-")[0]
    launch = ["-c", STAGED] if variant == "c-staged" else ["-m", "fedtiny.cli"]
    agg = subprocess.Popen([sys.executable, *launch, "aggregate", "--listen", f"127.0.0.1:{port}",
                            "--model", MODEL, "--rounds", "1", "--min-clients", str(n_devices),
                            "--round-timeout", "600", "--keys", keyfile, "--state", state_dir, "--dataset", "none",
                            "--ingest", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    delta = (np.random.default_rng(0).standard_normal(N_PARAMS) * 0.01).astype(np.float32)
    update = codec.encode(delta, rounding="stochastic", seed=1)
    gen = LoadGenerator(fleet_keys, update.blocks, ("127.0.0.1", port))
    try:
        time.sleep(0.5)
        gen.join(120)
        cpu0 = _cpu_s(agg.pid)
        t0, t1 = gen.upload(600, shuffled=variant == "c-shuffled")
        cpu1 = _cpu_at_close(agg.pid, state_dir, 60)   # a path that commits at the close pays there
        hwm = _proc_status_kib(agg.pid, "VmHWM")
        agg.wait(60)
    finally:
        gen.close()
        if agg.poll() is None:
            agg.kill()
            agg.wait()
    assert agg.returncode == 0, f"aggregator exited with {agg.returncode}"
    row = state.load(state_dir).metrics[0]
    assert row["clients"] == n_devices and row["samples"] == n_devices * N_SAMPLES, row
    wall = t1 - t0
    cpu = cpu1 - cpu0
    return {"devices": n_devices, "ingest": ingest, "slots_touched": row["slots_touched"], "upload_s": wall, "updates_per_s": n_devices / wall,
            "update_mb_per_s": n_devices * codec.wire_size(N_PARAMS) / wall / 1e6,
            "aggregator_cpu_ms_per_update": 1e3 * cpu / n_devices,
            "updates_per_cpu_s": n_devices / cpu if cpu > 0 else float("inf"),
            "aggregator_peak_rss_mib": hwm / 1024, "rejected": row["rejected"]}


@pytest.fixture(scope="module")
def table():
    """The variants side by side, printed once all of them ran (with -s)."""
    rows: list[dict] = []
    yield rows
    if rows:
        print(f"\n\naggregator ingest, 2nn, load average {os.getloadavg()[0]:.1f} at the end")
        print(f"{'path':<12} {'devices':>7} {'updates/s':>9} {'CPU/update':>11} {'updates/CPU-s':>13} {'peak RSS':>10} "
              f"{'slots touched':>13}")
        for r in sorted(rows, key=lambda r: (r["ingest"], r["devices"])):
            print(f"{r['ingest']:<12} {r['devices']:>7,} {r['updates_per_s']:>9.0f} "
                  f"{r['aggregator_cpu_ms_per_update']:>8.3f} ms {r['updates_per_cpu_s']:>13.0f} "
                  f"{r['aggregator_peak_rss_mib']:>6.1f} MiB {r['slots_touched']:>13}")


@pytest.mark.parametrize("ingest", ["c", "c-staged", "c-shuffled", "python"])
@pytest.mark.parametrize("n_devices", [100, 1000])
def test_ingest(benchmark, n_devices, ingest, tmp_path, table):
    n = n_devices if not benchmark.disabled else 4
    out = {}

    def run():
        out.update(run_ingest(n, str(tmp_path / f"run{len(os.listdir(tmp_path))}"), ingest))
    benchmark.group = f"aggregator ingest, {n_devices} devices (2nn int8 updates, loopback UDP)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    table.append(out)
    print(f"\n--ingest {ingest}, {n} devices: {out['updates_per_s']:.0f} updates/s ({out['update_mb_per_s']:.1f} MB/s) "
          f"over {out['upload_s']:.2f} s; aggregator CPU {out['aggregator_cpu_ms_per_update']:.3f} ms/update = "
          f"{out['updates_per_cpu_s']:.0f} updates per CPU-second; peak RSS {out['aggregator_peak_rss_mib']:.1f} MiB; "
          f"rejected {out['rejected']}")
