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
"""
import os
import shutil
import subprocess
import time

import pytest

from fedtiny.net import rx as rx_mod, wire
from fedtiny.net.demo import client_command
from netutil import CLIENT_ENV, AggregatorThread, Fleet, stop_all

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
