"""A garbage flood of 50,000 datagrams/s from one source (issue 10): honest rounds keep >= 50% of
their rate. Real `fedtiny client` processes, a real flooder in C (tests/c/flood.c: sendmmsg,
paced), real UDP on 127.0.0.1.

One aggregator run, twelve phases of PHASE_ROUNDS counted rounds each, calm and flood in turn,
each after one round that is not counted (short alternating phases, so that the changing load
of the shared machine falls on both alike and does not pass for the flood's effect; each flood
phase is a new flooder process, a new source port). A flooder at 50,000/s costs about 16% of
one core here (its system time: on loopback the kernel's receive path up to the socket, or its
filter, runs in the sender's context).
The ratio is rounds per second under the flood over rounds per second without it, both
measured by wall clock in the same run. What reached the aggregator is measured on its side:
every datagram it dropped by reason, including those the kernel dropped for its socket once the
flooder's address was blocked (source_blocked, from SO_MEMINFO).

The same flood against `--mode async` (server steps per second, calm against flood; the model
replayed from the checkpoint's arrival log bit for bit), and a connection flood at the status
page (`--http`, tests/http_flood.py as its own process) while rounds run, in the same
alternating phases.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from fedtiny.net import rx as rx_mod, state, wire
from fedtiny.net.demo import client_command
from netutil import CLIENT_ENV, AggregatorThread, Fleet, stop_all, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOD_MODEL = "mlp:64-256-256-10"   # 85,002 parameters: rounds of a few tenths of a second here
FLOOD_RATE = 50_000
PHASES = ("calm", "flood") * 6    # short phases, alternated: the machine's load changes hit both alike
PHASE_ROUNDS = 3


@pytest.fixture(scope="module")
def flooder(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the flooder (apt-get install gcc)")
    exe = str(tmp_path_factory.mktemp("flood") / "flood")
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", os.path.join(ROOT, "tests", "c", "flood.c"),
                    "-o", exe], check=True, timeout=60)
    return exe


def write_frames(path: str) -> None:
    """Half well-formed frames of a known device under another run (they pass the header and
    device checks and die at the session check, before any hashing), half bytes that are not
    fedtiny at all; each a 2-byte little-endian length and the datagram."""
    forged = [wire.encode(wire.MsgType.UPDATE_CHUNK, 0, 1, i, os.urandom(1056), os.urandom(32), chunk=(0, 2),
                          session=1 + i % 3, epoch=1, run=i) for i in range(64)]
    junk = [os.urandom(60 + 17 * i) for i in range(64)]
    with open(path, "wb") as f:
        for frame in (x for pair in zip(forged, junk) for x in pair):
            f.write(len(frame).to_bytes(2, "little") + frame)


def _dropped(agg) -> int:
    for _ in range(100):     # the aggregator's thread may be updating the counter
        try:
            return sum(dict(agg.rejected).values())
        except RuntimeError:
            time.sleep(0.001)
    raise AssertionError("could not read the aggregator's counts")


def _wait_rounds(at, n: int, budget_s: float) -> float:
    end = time.monotonic() + budget_s
    while len(at.agg.metrics) < n:
        assert not at.done.is_set(), f"aggregator stopped: {at.error!r}"
        assert time.monotonic() < end, f"round {n} did not close within {budget_s} s"
        time.sleep(0.01)
    return time.monotonic()


@pytest.mark.slow
@pytest.mark.parametrize("kernel_block", [True, False], ids=["kernel_block", "tokens_only"])
def test_garbage_flood_keeps_half_the_round_rate(tmp_path, flooder, kernel_block, monkeypatch):
    """kernel_block: the aggregator as it is; tokens_only: without the socket filter (the path
    before, fedtiny.net.rx.SOURCE_BLOCK = 0), measured beside it (only the flood's arrival is
    asserted there)."""
    if not kernel_block:
        monkeypatch.setattr(rx_mod, "SOURCE_BLOCK", 0.0)
    fleet = Fleet(tmp_path, 4)
    frames = str(tmp_path / "frames.bin")
    write_frames(frames)
    total = 2 + len(PHASES) * (PHASE_ROUNDS + 1)
    cfg = fleet.config(rounds=total, min_clients=4, dataset=None, round_timeout=30.0, model=FLOOD_MODEL)
    seconds = {"calm": 0.0, "flood": 0.0}
    rounds = {"calm": 0, "flood": 0}
    reached, sent, sent_s = 0, 0, 0.0
    with AggregatorThread(cfg) as at:
        procs = [subprocess.Popen(client_command(at.server, k, fleet.keyfile, fleet.data[k], FLOOD_MODEL),
                                  env=CLIENT_ENV, cwd=fleet.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for k in range(4)]
        flood = None
        try:
            _wait_rounds(at, 2, 120)                       # joined and warm
            for phase in PHASES:
                if phase == "flood":
                    # nice 0: at nice 10 (as if it were another machine) it does not get the CPU for
                    # 50,000/s on this shared VM; so it takes its share from the honest clients,
                    # and the kernel's receive work up to the socket (or its filter) runs in its
                    # context on loopback
                    flood = subprocess.Popen([flooder, at.address[0], str(at.address[1]), str(FLOOD_RATE), "600",
                                              frames], stdout=subprocess.PIPE, text=True)
                    assert flood.stdout.readline().strip() == "ready"
                # the round under way when the phase begins is not counted
                t0 = _wait_rounds(at, len(at.agg.metrics) + 1, 60)
                d0, k0 = _dropped(at.agg), len(at.agg.metrics)
                t1 = _wait_rounds(at, k0 + PHASE_ROUNDS, 120)
                d1 = _dropped(at.agg)
                seconds[phase] += t1 - t0
                rounds[phase] += PHASE_ROUNDS
                if flood is not None:
                    reached += d1 - d0
                    flood.terminate()
                    n, s = flood.communicate(timeout=10)[0].split()
                    sent, sent_s = sent + int(n), sent_s + float(s)
                    flood = None
            rows = at.agg.metrics
        finally:
            if flood is not None:
                flood.kill()
                flood.wait()
            stop_all(procs)
    assert [r["clients"] for r in rows] == [4] * len(rows), [r["clients"] for r in rows]
    calm, flooded = rounds["calm"] / seconds["calm"], rounds["flood"] / seconds["flood"]
    arrived = reached / seconds["flood"]
    load = os.getloadavg()
    print(f"\n{'with' if kernel_block else 'without'} the kernel block: {rounds['calm']} calm rounds at {calm:.2f}/s, {rounds['flood']} flooded rounds at {flooded:.2f}/s "
          f"({flooded / calm:.0%}); the flooder sent {sent / sent_s:,.0f} datagrams/s, the aggregator dropped "
          f"{arrived:,.0f}/s over the flooded rounds: {dict(at.agg.rejected)}; load average {load[0]:.1f} {load[1]:.1f}")
    # The flooder is paced at 50,000/s; on this 2-core machine shared with other jobs (load
    # average 40) it has been seen to get the CPU for 46,000/s only: 90% is required (below
    # that, the machine is too loaded for this test: the failure says so).
    if kernel_block:
        assert sent / sent_s >= 0.9 * FLOOD_RATE, f"the flooder reached only {sent / sent_s:,.0f} datagrams/s"
        assert arrived >= 0.9 * FLOOD_RATE, f"only {arrived:,.0f} datagrams/s reached the aggregator's socket"
        assert flooded / calm >= 0.5, f"rounds at {flooded / calm:.0%} of their rate under the flood"
    else:   # delivering into a full socket costs the flooder more: it may fall short of 50,000/s here
        assert arrived >= 0.8 * FLOOD_RATE, f"only {arrived:,.0f} datagrams/s reached the aggregator's socket"


def _alternate(at, phase_rounds: int, start_flood, stop_flood) -> dict:
    """Calm and flood phases in turn (PHASES) on a running aggregator; each phase starts after the
    round (server step) under way closes and lasts phase_rounds more. start_flood() starts the
    flood, stop_flood() ends it. Returns the wall seconds and rounds of each kind of phase, the
    drop counts the aggregator added during the flood phases by reason, and the rows' indices
    of the flood phases."""
    out = {"seconds": {"calm": 0.0, "flood": 0.0}, "rounds": {"calm": 0, "flood": 0},
           "dropped": Counter(), "flood_rows": []}
    _wait_rounds(at, 2, 120)                                   # joined and warm
    for phase in PHASES:
        if phase == "flood":
            start_flood()
        try:
            t0 = _wait_rounds(at, len(at.agg.metrics) + 1, 60)    # the round under way is not counted
            d0, k0 = _counts(at.agg), len(at.agg.metrics)
            t1 = _wait_rounds(at, k0 + phase_rounds, 120)
            d1 = _counts(at.agg)
        finally:
            if phase == "flood":
                stop_flood()
        out["seconds"][phase] += t1 - t0
        out["rounds"][phase] += phase_rounds
        if phase == "flood":
            out["dropped"] += d1 - d0
            out["flood_rows"] += list(range(k0, k0 + phase_rounds))
    return out


def _counts(agg) -> Counter:
    for _ in range(100):     # the aggregator's thread may be updating the counter
        try:
            return Counter(dict(agg.rejected))
        except RuntimeError:
            time.sleep(0.001)
    raise AssertionError("could not read the aggregator's counts")


class _Flooder:
    """tests/c/flood.c at FLOOD_RATE from a new process (a new source port) for each flood phase."""

    def __init__(self, exe: str, address, frames: str):
        self.exe, self.address, self.frames = exe, address, frames
        self.proc, self.sent, self.sent_s = None, 0, 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, self.address[0], str(self.address[1]), str(FLOOD_RATE), "600",
                                      self.frames], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        n, s = self.proc.communicate(timeout=10)[0].split()
        self.sent, self.sent_s, self.proc = self.sent + int(n), self.sent_s + float(s), None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


ASYNC_PHASE_STEPS = 8


@pytest.mark.slow
def test_garbage_flood_against_async_mode_keeps_half_the_step_rate(tmp_path, flooder):
    """`--mode async` (FedBuff, --buffer 2 --concurrency 4) with 4 real client processes and the
    same 50,000 datagrams/s flood in alternate phases: honest updates keep arriving and server
    steps keep happening under it (at >= 50% of their calm rate), the flood is dropped and counted
    by reason, and none of it reaches the model: the checkpoint's accepted (device, version, n_k)
    sequence, replayed through the round logic, gives the aggregator's model bit for bit, and
    names only the honest devices."""
    from fedtiny.net.aggregator import AggregateConfig
    from test_async_net import EPOCHS, K, M, S, SEED, _write_fleet, replay
    from netutil import MODEL
    honest = 4
    keyfile, paths = _write_fleet(str(tmp_path), honest)     # the slow device's files are written, never started
    frames = str(tmp_path / "frames.bin")
    write_frames(frames)                                      # forged frames name device 0
    total = 2 + len(PHASES) * (ASYNC_PHASE_STEPS + 2) + 12     # phases may start a step late: a margin
    cfg = AggregateConfig(listen="127.0.0.1:0", model=MODEL, rounds=total, keys=keyfile, state=str(tmp_path / "state"),
                          dataset="digits", seed=SEED, epochs=EPOCHS, lr=0.05, batch=10, round_timeout=20.0,
                          mode="async", buffer=K, concurrency=M, max_staleness=S)
    with AggregatorThread(cfg) as at:
        procs = [subprocess.Popen(client_command(at.server, k, keyfile, paths[k], MODEL), env=CLIENT_ENV,
                                  cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for k in range(honest)]
        flood = _Flooder(flooder, at.address, frames)
        try:
            out = _alternate(at, ASYNC_PHASE_STEPS, flood.start, flood.stop)
            at.wait(120)
        finally:
            flood.kill()
            stop_all(procs)
        rows = at.agg.metrics
        weights = at.agg.server.params.copy()
    sec, rnds, dropped = out["seconds"], out["rounds"], out["dropped"]
    calm, flooded = rnds["calm"] / sec["calm"], rnds["flood"] / sec["flood"]
    arrived = sum(dropped.values()) / sec["flood"]
    print(f"\nasync: {rnds['calm']} calm steps at {calm:.2f}/s, {rnds['flood']} flooded steps at {flooded:.2f}/s "
          f"({flooded / calm:.0%}); the flooder sent {flood.sent / flood.sent_s:,.0f} datagrams/s, the aggregator "
          f"dropped {arrived:,.0f}/s over the flooded steps: {dict(dropped)}; load average {os.getloadavg()[0]:.1f}")
    assert len(rows) == total and all(len(r["arrivals"]) == K for r in rows)
    under_flood = [d for i in out["flood_rows"] for d, *_ in rows[i]["arrivals"]]
    assert len(under_flood) == K * rnds["flood"] and set(under_flood) == set(range(honest)), under_flood
    # the flood: dropped and counted by reason, before any session (none of it is a device's update)
    assert flood.sent / flood.sent_s >= 0.9 * FLOOD_RATE, f"the flooder reached only {flood.sent / flood.sent_s:,.0f}/s"
    assert arrived >= 0.9 * FLOOD_RATE, f"only {arrived:,.0f} datagrams/s reached the aggregator's socket"
    assert not {"too_stale", "weight_changed", "duplicate_chunk"} & set(dropped), dropped
    assert flooded / calm >= 0.5, f"server steps at {flooded / calm:.0%} of their rate under the flood"
    np.testing.assert_array_equal(weights, replay(rows, paths))
    np.testing.assert_array_equal(state.load(cfg.state).weights, weights)


HTTP_WORKERS = 32
HTTP_PHASE_ROUNDS = 10     # rounds of a few tenths of a second: flood phases of seconds each


@pytest.mark.slow
def test_status_page_connection_flood_keeps_half_the_round_rate(tmp_path):
    """A sustained flood at --http (tests/http_flood.py, its own process: 32 connection loops, one
    connection after another -- GETs of the JSON, the metrics and the page, a rebound Host, garbage,
    connections closed at once) in alternate phases while 4 real client processes run rounds:
    rounds keep >= 50% of their calm rate, every answer the flooder read was counted by the status
    server under its code, and after the flood no connection stays open and the page answers."""
    from test_status import free_tcp_port, get
    fleet = Fleet(tmp_path, 4)
    cfg = fleet.config(rounds=5000, min_clients=4, dataset=None, round_timeout=30.0, model=FLOOD_MODEL,
                       http=f"127.0.0.1:{free_tcp_port()}")
    tallies = []
    with AggregatorThread(cfg) as at:
        procs = [subprocess.Popen(client_command(at.server, k, fleet.keyfile, fleet.data[k], FLOOD_MODEL),
                                  env=CLIENT_ENV, cwd=fleet.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for k in range(4)]
        srv = at.agg.status_server
        host, port = srv.address[:2]
        flood = []

        def start():
            flood.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "http_flood.py"), host,
                                           str(port), "120", str(HTTP_WORKERS)], stdout=subprocess.PIPE, text=True))
            assert flood[-1].stdout.readline().strip() == "ready"

        def stop():
            p = flood.pop()
            p.terminate()
            tallies.append(json.loads(p.communicate(timeout=30)[0]))

        try:
            out = _alternate(at, HTTP_PHASE_ROUNDS, start, stop)
            wait_for(lambda: srv.active == 0 and not srv._writers, 15, "the flood's connections closed")
            code, _, body = get(srv.url + "status.json")
            assert code == 200 and json.loads(body)["rounds_done"] >= len(PHASES) * HTTP_PHASE_ROUNDS
        finally:
            for p in flood:
                p.kill()
                p.wait()
            stop_all(procs)
        rows = at.agg.metrics
        served = Counter({str(c): n for c, n in srv.responses.items()})
    sec, rnds = out["seconds"], out["rounds"]
    calm, flooded = rnds["calm"] / sec["calm"], rnds["flood"] / sec["flood"]
    read = sum((Counter(t["answers"]) for t in tallies), Counter())
    conns = sum(t["connections"] for t in tallies)
    print(f"\nstatus page flood: {rnds['calm']} calm rounds at {calm:.2f}/s, {rnds['flood']} flooded rounds at "
          f"{flooded:.2f}/s ({flooded / calm:.0%}); {conns / sec['flood']:,.0f} connections/s, answers read "
          f"{dict(read)}, the server's counts {dict(served)}; load average {os.getloadavg()[0]:.1f}")
    assert [r["clients"] for r in rows] == [4] * len(rows)
    assert conns >= 20 * sec["flood"], f"only {conns} connections in {sec['flood']:.1f} s of flood"
    for code in ("200", "400", "403", "503"):
        assert read[code] >= 1, (code, read)
        assert served[code] >= read[code], (code, read, served)     # every answer read was counted
    assert flooded / calm >= 0.5, f"rounds at {flooded / calm:.0%} of their rate under the status page flood"
