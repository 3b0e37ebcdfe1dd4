"""Replays die with their run (protocol version 2, docs/PROTOCOL.md "Sessions"), with real
processes on 127.0.0.1: frames of round 1 captured by a relay and replayed after a SIGTERM and
a restart from the same --state (stale_epoch), into a new run (stale_run); a client killed with
-9 and restarted gets back in at once; clients of another architecture or size are told, exit
with code 2 and one line, and the aggregator serves the others.

Oracles: the exact number of frames replayed (each is refused under its reason, none reaches a
round), `fedtiny simulate` bit for bit for the run with the rebooted client."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from fedtiny.net import state, wire
from fedtiny.net.demo import client_command
from netutil import (CLIENT_ENV, MODEL, AggregatorThread, Fleet, client_logs, free_udp_port, simulate_oracle,
                     stop_all, wait_for)
from udp_relay import LossyRelay


class RecordingRelay(LossyRelay):
    """A lossless relay that keeps every datagram the devices sent: the attacker's capture."""

    def __init__(self, server):
        super().__init__(server, drop=0, duplicate=0, reorder=0)
        self.captured: list[bytes] = []

    def _forward(self, data, transport, addr, direction):
        if direction == "up":
            self.captured.append(bytes(data))
        super()._forward(data, transport, addr, direction)


def _aggregate_cmd(fleet, port, rounds, state_dir, seed=0):
    return [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}", "--model", MODEL,
            "--rounds", str(rounds), "--min-clients", str(fleet.clients), "--round-timeout", "20",
            "--keys", fleet.keyfile, "--state", state_dir, "--dataset", "digits", "--seed", str(seed)]


def _capture_round_1(fleet, state_dir):
    """Run round 1 with real clients behind a recording relay, then SIGTERM the aggregator and
    stop the clients: (captured datagrams, the run id on disk)."""
    port = free_udp_port()
    agg = subprocess.Popen(_aggregate_cmd(fleet, port, 2, state_dir), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd=fleet.dir)
    procs = []
    try:
        with RecordingRelay(("127.0.0.1", port)) as relay:
            procs = fleet.start_clients(f"{relay.addr[0]}:{relay.addr[1]}")
            for line in agg.stderr:              # round 1 is on disk once round 2 is offered
                if "round 2:" in line:
                    break
            agg.send_signal(signal.SIGTERM)
            agg.wait(timeout=10)
            captured = list(relay.captured)
    finally:
        if agg.poll() is None:
            agg.kill()
            agg.wait()
        agg.stderr.close()
        stop_all(procs)
    assert agg.returncode == 0
    assert state.load(state_dir).round == 1
    return captured


def _replay(at, frames):
    """Send the captured datagrams to a running aggregator from one socket, as an attacker would."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for f in frames:
            s.sendto(f, tuple(at.address))
            time.sleep(0.0005)


def test_round_1_replayed_after_restart_and_into_a_new_run_is_stale(tmp_path):
    fleet = Fleet(tmp_path, 3)
    state_dir = str(tmp_path / "state")
    captured = _capture_round_1(fleet, state_dir)
    heads = [wire.peek(f) for f in captured]
    in_session = [f for f, h in zip(captured, heads) if h.session != 0]
    round_1 = {h.type for h in heads if h.session != 0 and h.round == 1}
    assert {wire.MsgType.ACK, wire.MsgType.RESULT, wire.MsgType.UPDATE_CHUNK} <= round_1, round_1
    assert any(h.type == wire.MsgType.HELLO and h.session != 0 for h in heads)   # in-session HELLOs too
    joins = [f for f, h in zip(captured, heads) if h.session == 0]
    assert joins and len(in_session) > 3 * wire.update_chunks(2410)

    # 1. the same --state, restarted (a new life: epoch 2); no device is online
    with AggregatorThread(fleet.config(rounds=2, min_clients=3, state=state_dir)) as at:
        agg = at.agg
        assert agg.epoch == 2
        _replay(at, captured)
        wait_for(lambda: agg.rejected["stale_epoch"] == len(in_session), 10,
                 f"{len(in_session)} stale_epoch rejections, got {dict(agg.rejected)}")
        time.sleep(1.0)                                   # time for a round to (wrongly) open
        assert agg.rejected["stale_epoch"] == len(in_session), dict(agg.rejected)
        assert set(agg.rejected) <= {"stale_epoch", "hello_rate"}, dict(agg.rejected)
        # the replayed join HELLOs only got WELCOMEs: no session became current, nobody is alive
        assert all(d.session is None for d in agg.devices.values())
        assert agg._alive(time.monotonic()) == [] and agg.current is None and agg.server.round_id == 1
    assert state.load(state_dir).round == 1                # no round completed

    # 2. a new run: fresh --state, another --seed, the same keys
    with AggregatorThread(fleet.config(rounds=2, min_clients=3, state=str(tmp_path / "fresh"), seed=7)) as at:
        agg = at.agg
        assert agg.epoch == 1
        _replay(at, captured)
        wait_for(lambda: agg.rejected["stale_run"] == len(in_session), 10,
                 f"{len(in_session)} stale_run rejections, got {dict(agg.rejected)}")
        time.sleep(1.0)
        assert set(agg.rejected) <= {"stale_run", "hello_rate"}, dict(agg.rejected)
        assert all(d.session is None for d in agg.devices.values())
        assert agg.current is None and agg.server.round_id == 0
    assert state.load(str(tmp_path / "fresh")) is None


def test_rebooted_client_rejoins_at_once_and_the_run_is_simulate(tmp_path):
    """kill -9 of client 1 the moment round 2 opens, restarted at once: its counters and session
    restart, it joins a new session within 3 s, round 2 waits for it, and the weights are
    `fedtiny simulate`'s bit for bit."""
    k, rounds = 2, 3
    fleet = Fleet(tmp_path, k)
    procs = []
    with AggregatorThread(fleet.config(rounds=rounds, min_clients=k)) as at:
        agg = at.agg
        try:
            procs = fleet.start_clients(at.server)
            wait_for(lambda: agg.current is not None and agg.current.id == 2, 30, "round 2 to open")
            old = agg.devices[1].session.number
            procs[1].send_signal(signal.SIGKILL)
            procs[1].wait(timeout=5)
            procs[1].stderr.close()
            t0 = time.monotonic()
            procs[1] = fleet.start_clients(at.server, ids=[1])[0]
            wait_for(lambda: agg.devices[1].session.number != old, 10, "the rebooted client's new session")
            rejoined = time.monotonic() - t0
            at.wait(40)
            for p in (procs[0], procs[1]):
                assert p.wait(timeout=10) == 0, client_logs(procs)
        finally:
            stop_all(procs)
    assert rejoined < 3.0, rejoined     # process start (imports) included
    weights, rows = simulate_oracle(k, rounds)
    ck = state.load(str(tmp_path / "state"))
    np.testing.assert_array_equal(ck.weights, weights)
    assert [r["clients"] for r in ck.metrics] == [k] * rounds


def test_clients_of_another_architecture_or_size_exit_2_and_the_others_go_on(tmp_path):
    fleet = Fleet(tmp_path, 2)   # ids 0, 1 run MODEL; the spare ids 2, 3 another model
    procs, bad = [], []
    with AggregatorThread(fleet.config(rounds=3, min_clients=2, round_timeout=20)) as at:
        agg = at.agg
        try:
            for dev, spec in ((2, "mlp:64-24-24-10"), (3, "mlp:64-10")):
                bad.append(subprocess.Popen(client_command(at.server, dev, fleet.keyfile, fleet.data[0], spec),
                                            env=CLIENT_ENV, cwd=fleet.dir, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True))
            wait_for(lambda: all(d in agg.devices and agg.devices[d].session is not None for d in (2, 3)), 20,
                     "the mismatched clients to join")
            procs = fleet.start_clients(at.server)
            errs = [p.communicate(timeout=30)[1] for p in bad]
            at.wait(40)
        finally:
            stop_all(procs + bad)
    assert [p.returncode for p in bad] == [2, 2], errs
    last = [e.strip().splitlines()[-1] for e in errs]
    assert last[0].startswith("fedtiny client: error: device 2: the aggregator's model (another architecture, "
                              "architecture 02b9348d) is not this device's --model mlp:64-24-24-10 (2,410 "
                              "parameters, architecture 1c99e7ab)"), last[0]
    assert last[1].startswith("fedtiny client: error: device 3: the aggregator's model (2,410 parameters, "
                              "architecture 02b9348d) is not this device's --model mlp:64-10 (650 parameters"), last[1]
    for line in last:
        assert line.endswith("start the client with the aggregator's --model") and "Traceback" not in "".join(errs)
        assert "the aggregator says: the aggregator runs --model mlp:64-32-10" in line
    assert agg.devices[2].excluded and agg.devices[3].excluded
    ck = state.load(str(tmp_path / "state"))
    # round 1 drew the two mismatched devices (they joined first): it closes as soon as both
    # refused, not at its 20 s deadline; then the others train
    assert ck.round == 3 and [r["clients"] for r in ck.metrics] == [0, 2, 2]
    first = ck.metrics[0]
    assert first["selected"] == 2 and first["outcome"] == "abandoned" and first["closed_by"] == "forced"
    assert first["round_s"] < 5.0, first
