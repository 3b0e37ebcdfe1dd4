"""`fedtiny fleet`: rounds handed down the uplink, 3 real `fedtiny client` processes over UDP, and
the partial sum handed back before any server step. Oracle: each device's update recomputed here
from its data and seeds exactly as `fedtiny client` computes it, summed in float64. Hostile
uplink frames get an ERROR naming the problem, and the fleet keeps serving."""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading

import numpy as np
import pytest

from fedtiny import codec, model as model_mod, train
from fedtiny.flower import uplink
from fedtiny.flower.fleet import FleetAggregator
from fedtiny.net.common import load_data
from fedtiny.seeds import derive_seed

from netutil import CLIENT_ENV, MODEL, Fleet, stop_all  # noqa: F401

CLIPPED: list[bool] = []
CONFIG = {"lr": 0.05, "epochs": 1, "batch": 10, "codec": "int8-stochastic"}


class FleetThread:
    def __init__(self, cfg, path):
        self.agg = FleetAggregator(cfg, path, out=open(os.devnull, "w"))
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        await self.agg.serve(self.stop, ready=lambda a: (setattr(self, "address", a), self.ready.set()))

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10) and self.error is None, self.error
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(15)
        self.agg.out.close()


def _oracle_sum(m, g, data_paths, fleet_round, seed, clip_norm):
    """sum_k n_k c_k decode(q_k) in float64, sum_k |...| (the rounding scale) and sum_k n_k, each
    device's update as `fedtiny client` makes it, c_k = min(1, C / ||decode(q_k)||) the fleet's
    clipping (its --clip-norm, docs/network.md "Bounds")."""
    total, mag, weight = np.zeros(m.n_params), np.zeros(m.n_params), 0
    for k, path in enumerate(data_paths):
        x, y = load_data(path, m)
        params = g.copy()
        res = train.local_sgd(m, params, x, y, epochs=1, batch_size=10, lr=0.05,
                              seed=derive_seed(seed, fleet_round, k, 1))
        params -= g
        q = codec.encode(params, rounding="stochastic", seed=derive_seed(seed, fleet_round, k, 2))
        blocks = q._buf[codec.HEADER_BYTES:].view(codec.BLOCK_DTYPE)
        delta = (blocks["d"].astype(np.float64)[:, None] * blocks["q"].astype(np.float64)).reshape(-1)[:m.n_params]
        norm = np.sqrt(np.sum(delta * delta))
        clipped = clip_norm is not None and norm > clip_norm
        term = res.n_samples * (clip_norm / norm if clipped else 1.0) * delta
        CLIPPED.append(clipped)
        total += term
        mag += np.abs(term)
        weight += res.n_samples
    return total, mag, weight


def _raw_exchange(path, frame: bytes) -> tuple[int, dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(frame)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    msg_type, hlen, plen = uplink.parse_prefix(buf[:uplink.PREFIX.size])
    return msg_type, uplink.parse_header(buf[uplink.PREFIX.size:uplink.PREFIX.size + hlen])


@pytest.mark.slow
def test_fleet_returns_the_partial_sum_of_its_devices_for_the_model_it_was_given(tmp_path):
    CLIPPED.clear()
    fleet = Fleet(tmp_path, 3)
    m = model_mod.build(MODEL)
    path = os.path.join(tmp_path, "up.sock")
    cfg = fleet.config(rounds=100, min_clients=3, dataset=None, round_timeout=30.0)
    with FleetThread(cfg, path) as ft:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        server = f"{ft.address[0]}:{ft.address[1]}"
        procs = fleet.start_clients(server)
        try:
            n = m.n_params
            good = np.ascontiguousarray(m.init(5))
            # hostile uplink frames first: each refused with its reason, nothing starts
            hostile = {
                "magic": b"XXXX" + uplink.pack(uplink.ROUND, {"n_params": n}, good.tobytes())[4:],
                "type": uplink.pack(uplink.PARTIAL, {"n_params": n}, good.tobytes()),
                "json": uplink.PREFIX.pack(uplink.MAGIC, 1, uplink.ROUND, 0, 3, 0) + b"{x]",
                "size": uplink.pack(uplink.ROUND, {"n_params": n + 1}, np.zeros(n + 1, np.float32).tobytes()),
                "nan": uplink.pack(uplink.ROUND, {"n_params": n}, np.full(n, np.nan, np.float32).tobytes()),
                "lr": uplink.pack(uplink.ROUND, {"n_params": n, "lr": -1}, good.tobytes()),
                "codec": uplink.pack(uplink.ROUND, {"n_params": n, "codec": "gzip"}, good.tobytes()),
                "huge": struct.pack("<4sBBHII", uplink.MAGIC, 1, uplink.ROUND, 0, 1 << 30, 0),
            }
            for name, frame in hostile.items():
                msg_type, header = _raw_exchange(path, frame)
                assert msg_type == uplink.ERROR and header["error"], name
            assert ft.agg.server.round_id == 0
            g = good
            for r in (1, 2):
                header, partial = uplink.request_round(path, g, {**CONFIG, "flower_round": r}, timeout=60)
                want, mag, weight = _oracle_sum(m, g, fleet.data, header["fleet_round"], cfg.seed, cfg.clip_norm or None)
                assert header["updates"] == 3 and header["total_weight"] == weight
                tol = 4 * np.finfo(np.float32).eps * mag      # three float32 products and sums
                assert (np.abs(partial - want) <= tol).all(), np.abs(partial - want).max()
                assert np.abs(want).max() > 1.0               # the devices trained: not a vacuous check
                g = (g + partial / np.float32(weight)).astype(np.float32)   # the tier above steps
            assert any(CLIPPED) and not all(CLIPPED)   # both paths of the fleet's clipping were checked
        finally:
            stop_all(procs)


@pytest.mark.parametrize("extra, says", [
    (["--server-opt", "fedadam"], "a fleet takes no server step of its own"),
    (["--uplink-is-a-file"], "exists and is not a socket"),
    (["--uplink", "/nonexistent-dir/up.sock"], "does not exist"),
])
def test_fleet_command_line_errors_are_one_line_and_exit_2(tmp_path, extra, says):
    import subprocess
    import sys
    fleet = Fleet(tmp_path, 1)
    path = os.path.join(tmp_path, "up.sock")
    if extra == ["--uplink-is-a-file"]:
        with open(path, "w") as f:
            f.write("not a socket")
        extra = []
    cmd = [sys.executable, "-m", "fedtiny.cli", "fleet", "--listen", "127.0.0.1:0", "--keys", fleet.keyfile,
           "--state", os.path.join(tmp_path, "st"), "--model", MODEL, "--uplink", path, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=CLIENT_ENV)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fedtiny fleet: error:") and says in last, res.stderr
    if not extra:
        with open(path) as f:
            assert f.read() == "not a socket"      # nothing lost
