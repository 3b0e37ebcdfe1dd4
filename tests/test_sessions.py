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
    """kill -9 of client 1 the moment round 1 closes, restarted at once: its counters and session
    restart, it joins a new session within 3 s, the next round waits for it, and the weights are
    `fedtiny simulate`'s bit for bit."""
    k, rounds = 2, 6    # rounds of this model take milliseconds: enough of them that the kill lands mid-run
    fleet = Fleet(tmp_path, k)
    procs = []
    with AggregatorThread(fleet.config(rounds=rounds, min_clients=k)) as at:
        agg = at.agg
        try:
            procs = fleet.start_clients(at.server)
            wait_for(lambda: agg.server.round_id >= 1, 90, "round 1 to close")
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


# ---- the pieces: run identity, architecture hash, the handshake against hostile frames -----------

def test_begin_life_new_run_then_one_epoch_per_life(tmp_path):
    import json
    d = str(tmp_path / "st")
    run_id, epoch = state.begin_life(d)
    assert len(run_id) == 8 and epoch == 1
    assert state.begin_life(d) == (run_id, 2) and state.begin_life(d) == (run_id, 3)
    on_disk = json.loads((tmp_path / "st" / "run.json").read_text())
    assert on_disk["run_id"] == run_id.hex() and on_disk["epoch"] == 3
    other, epoch = state.begin_life(str(tmp_path / "other"))
    assert other != run_id and epoch == 1
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_begin_life_refuses_a_damaged_or_exhausted_run_file(tmp_path):
    import json
    import pytest
    path = tmp_path / "run.json"
    for text in ("[]", "{}", '{"run_id": "00", "epoch": 1}', '{"run_id": "0011223344556677", "epoch": 0}',
                 '{"run_id": "0011223344556677", "epoch": true}', "not json"):
        path.write_text(text)
        with pytest.raises(ValueError, match="run.json is damaged .*empty --state directory"):
            state.begin_life(str(tmp_path))
        assert path.read_text() == text                      # nothing overwritten
    path.write_text(json.dumps({"run_id": "0011223344556677", "epoch": 2**32 - 1}))
    with pytest.raises(ValueError, match="last one"):
        state.begin_life(str(tmp_path))


def test_the_epoch_is_on_disk_before_the_socket_exists(tmp_path):
    """The port is taken, so serve() fails to bind: the life's epoch was written all the same."""
    import asyncio
    import json
    import socket
    import pytest
    from fedtiny.net.aggregator import Aggregator
    fleet = Fleet(tmp_path, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        cfg = fleet.config(listen=f"127.0.0.1:{busy.getsockname()[1]}", dataset=None)
        with open(os.devnull, "w") as out, pytest.raises(OSError):
            asyncio.run(Aggregator(cfg, out=out).serve())
    assert json.loads((tmp_path / "state" / "run.json").read_text())["epoch"] == 1


def test_arch_hash_is_sha256_of_the_documented_layer_text():
    import hashlib
    from fedtiny import model
    text = "fedtiny-arch/1\ndense 1x1x64 -> 1x1x32 k0\nrelu 1x1x32 -> 1x1x32 k0\ndense 1x1x32 -> 1x1x10 k0\n"
    m = model.build("mlp:64-32-10")
    assert m.arch_text() == text
    assert m.arch_hash() == hashlib.sha256(text.encode()).digest()[:16]
    same_size = model.build("mlp:64-24-24-10")
    assert same_size.n_params == m.n_params and same_size.arch_hash() != m.arch_hash()
    assert model.build("seq:1x1x64,dense32,relu,dense10").arch_hash() == m.arch_hash()   # one architecture
    cnn = model.build("cnn").arch_text().splitlines()
    assert cnn[1] == "conv2d 28x28x1 -> 24x24x32 k5" and cnn[3] == "maxpool2 24x24x32 -> 12x12x32 k0"


def test_hostile_frames_against_sessions(tmp_path):
    """A hand-driven device: a replayed join HELLO leaves the current session alone; after the
    device joins again, frames of its old session are stale_session; a WELCOME replayed to a
    device is taken once only; an OFFER of an earlier life is refused by the device."""
    from fedtiny.net import session
    from netutil import HandDevice
    fleet = Fleet(tmp_path, 1)
    with AggregatorThread(fleet.config(rounds=1, min_clients=2, dataset=None)) as at:
        agg = at.agg
        dev = HandDevice(at.address, 0, fleet.keys[0])
        try:
            nonce = os.urandom(8)
            join = dev.join_hello(nonce)
            w1 = wire.Welcome.unpack(dev.expect(wire.MsgType.WELCOME, resend=dev.send(join)).payload)
            dev.welcome, dev.key, dev.seq = w1, wire.session_key(dev.psk, 0, w1), 0
            old_hello = dev.send(dev.hello())
            wait_for(lambda: agg.devices[0].session is not None, 5, "session 1 to become current")
            s1 = agg.devices[0].session
            assert s1.number == w1.session and (s1.run, s1.epoch) == (agg.run_tag, agg.epoch)

            # the client side: the WELCOME is taken for its join's nonce, and stale once the join is done
            raw = session.welcome_frame(0, dev.psk, w1)
            assert session.open_welcome(raw, dev.psk, nonce) == w1
            try:
                session.open_welcome(raw, dev.psk, None)
                raise AssertionError("a WELCOME outside a join was taken")
            except session.Rejected as exc:
                assert exc.reason == "stale_welcome"

            time.sleep(0.06)
            dev.send(join)                         # a replayed join HELLO: one WELCOME, nothing moves
            time.sleep(0.2)
            assert agg.devices[0].session is s1 and agg.devices[0].addr is not None

            w2 = dev.join()                        # the device joins again (it rebooted)
            assert w2.session != w1.session and w2.agg_nonce != w1.agg_nonce
            dev.send(dev.hello())
            wait_for(lambda: agg.devices[0].session.number == w2.session, 5, "session 2 to become current")
            before = agg.rejected["stale_session"]
            dev.send(old_hello)                    # a frame of session 1, authentic when it was sent
            wait_for(lambda: agg.rejected["stale_session"] == before + 1, 5, "stale_session")

            # the device side: an OFFER from an earlier life of this run is refused before its tag
            dev_s = session.Session(0, dev.psk, w2, follow_rounds=True)
            agg_s = session.Session(0, dev.psk, wire.Welcome(w2.run_id, w2.epoch - 1 if w2.epoch > 1 else 9,
                                                             w2.session, w2.device_nonce, w2.agg_nonce))
            offer = agg_s.seal(wire.MsgType.OFFER, 1, wire.Offer(10, bytes(16), 0.1, 1, 1, 100).pack())
            try:
                dev_s.open(offer)
                raise AssertionError("an offer of another life was taken")
            except session.Rejected as exc:
                assert exc.reason == "stale_epoch"
        finally:
            dev.close()
