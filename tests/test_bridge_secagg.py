"""`fedtiny bridge --secagg-proxy`: a C device built without SecAgg+ (the example firmware's host
build, its plain protocol only) takes part in `fedtiny aggregate --secagg` rounds through the
bridge, which runs its SecAgg+ stage (fedtiny.net.bridge_secagg) next to `fedtiny client`
processes that run their own. Real processes, real pseudo-terminals, real UDP on 127.0.0.1."""
import ast
import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import pytest

from fedtiny.net import session, state, wire
from fedtiny.privacy import grid as gridmod
from netutil import CLIENT_ENV, AggregatorThread, Fleet, client_delta, client_logs, stop_all

pytest.importorskip("serial", reason="fedtiny bridge needs pyserial (pip install 'fedtiny[serial]')")
from serial_fleet import build_host_firmware, write_device_data  # noqa: E402
from q8_oracle import quantize as q8_quantize  # noqa: E402
from secagg_oracle import centered, clipped_grid  # noqa: E402
from secagg_oracle import grid as grid_oracle  # noqa: E402
from udp_relay import LossyRelay  # noqa: E402

M = wire.MsgType


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    """The example firmware's host build as the 32 KB-flash part's image is built (FW_SECAGG=0: no
    fw_secagg.c, no X25519, HKDF, Poly1305 or Shamir linked), so the device behind the proxy cannot
    run SecAgg+ itself."""
    return build_host_firmware(tmp_path_factory.mktemp("fw_plain"), secagg=False)


class SerialTap:
    """A serial line between a device's pty (the firmware holds its master) and a new pty the bridge
    opens, passing whole COBS lines; `kill_at(type, round, proc)` stops the device (kills its process
    and hangs up the bridge's side) when it is about to send that frame, which never arrives."""

    def __init__(self, device_slave: int):
        self.dev = device_slave
        _raw(self.dev)
        self.master, self.slave = os.openpty()
        _raw(self.master)
        _raw(self.slave)
        self.path = os.ttyname(self.slave)
        self.kill = None
        self.killed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def kill_at(self, msg_type: int, round_id: int, proc: subprocess.Popen) -> None:
        self.kill = (msg_type, round_id, proc)

    def _run(self) -> None:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.dev, selectors.EVENT_READ)
        sel.register(self.master, selectors.EVENT_READ)
        line = bytearray()
        while not self._stop.is_set() and not self.killed.is_set():
            for key, _ in sel.select(0.05):
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    continue
                if key.fd == self.master:
                    os.write(self.dev, data)
                    continue
                line += data
                while b"\x00" in line:
                    seg, _, rest = bytes(line).partition(b"\x00")
                    line = bytearray(rest)
                    if not seg:
                        continue
                    frames = list(wire.StreamDecoder().feed(b"\x00" + seg + b"\x00"))
                    if self.kill and frames:
                        f = wire.peek(frames[0])
                        t, r, proc = self.kill
                        if f.type == t and f.round == r:
                            proc.kill()
                            os.close(self.master)   # the bridge's side hangs up
                            self.killed.set()
                            break
                    os.write(self.master, b"\x00" + seg + b"\x00")
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in ((self.slave,) if self.killed.is_set() else (self.master, self.slave)):
            os.close(fd)


def _raw(fd: int) -> None:
    from serial_relay import raw
    raw(fd)


def _int8_then_grid(delta: np.ndarray, rounding: str, q8_seed: int, clip: float, g, round_key: bytes) -> np.ndarray:
    """The oracle of a proxied device's grid vector: its delta as the firmware's int8 blocks (numpy
    restatement of the codec), decoded d * q, clipped to the grid's bound, on the grid (numpy)."""
    d, q, _ = q8_quantize(delta, rounding, q8_seed)
    decoded = (np.repeat(d, 128)[:delta.size] * q[:delta.size].astype(np.float32)).astype(np.float32)
    norm = float(np.sqrt(np.sum(decoded.astype(np.float64) ** 2)))
    scale = 1.0 if norm <= clip else clip / norm
    return grid_oracle(decoded, 0, scale, g.step, g.qmax, round_key), q[:delta.size]


def test_small_device_takes_part_in_secure_rounds_through_the_proxy(tmp_path, firmware):
    """2 C devices (plain protocol) behind one `fedtiny bridge --secagg-proxy`, 2 `fedtiny client`
    processes, 2 rounds of `fedtiny aggregate --secagg`; in round 2 the first C device is killed as
    it sends its RESULT (its serial side hangs up), after the bridge has answered the key and share
    stages for it.

    (1) Exact: each round's model is the old one plus the float64 mean of the survivors' grid
        vectors, computed here in numpy from the devices' deltas (the C devices dump theirs; the
        Python clients' are retrained here): a proxied device's vector is its delta as int8 blocks
        (tests/q8_oracle.py), decoded, clipped and put on the grid (tests/secagg_oracle.py).
    (2) Blind: every datagram the aggregator receives from a proxied device is captured on the
        way (a tap relay): none is a RESULT or UPDATE_CHUNK, none carries the device's int8 values,
        and its masked vector is uncorrelated with its grid vector.
    (3) Dropout: round 2 is applied with the 3 survivors."""
    n_c, n_py, rounds, clip = 2, 2, 2, 1.0
    n = n_c + n_py
    fleet = Fleet(tmp_path, n)
    cfg = fleet.config(model="mlp:64-10", rounds=rounds, min_clients=n, secagg=True, clip_norm=clip, codec="int8",
                       round_timeout=10.0, secagg_stage_timeout=6.0, lr=0.05, batch=10)
    up = defaultdict(list)   # device id -> the frames (peeked) the aggregator got from it
    ptys = [os.openpty() for _ in range(n_c)]
    taps = []
    procs = []

    def tap(direction, datagram):
        if direction == "up":
            try:
                up[wire.peek(datagram).device_id].append(wire.peek(datagram))
            except wire.FrameError:
                pass

    try:
        with AggregatorThread(cfg) as at, contextlib.ExitStack() as stack:
            relay = stack.enter_context(LossyRelay(at.address, drop=0, duplicate=0, reorder=0, seed=1, tap=tap))
            server = f"{relay.addr[0]}:{relay.addr[1]}"
            taps = [SerialTap(slave) for _, slave in ptys]
            bridge = [sys.executable, "-m", "fedtiny.cli", "bridge", "--server", server, "--secagg-proxy",
                      "--keys", fleet.keyfile]
            for t in taps:
                bridge += ["--serial", t.path]
            procs.append(subprocess.Popen(bridge, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          cwd=fleet.dir))
            for k, (master, _) in enumerate(ptys):
                data = str(tmp_path / f"device{k}.bin")
                write_device_data(fleet.data[k], k, fleet.keys[k], data)
                procs.append(subprocess.Popen(
                    [firmware, "--fd", str(master), "--provision", data, "--rounds", str(rounds), "--timeout", "60",
                     "--dump-delta", str(tmp_path / f"delta{k}")],
                    pass_fds=(master,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            taps[0].kill_at(M.RESULT, 2, procs[1])
            for k in range(n_c, n):
                procs.append(subprocess.Popen(_client(server, k, fleet), env=CLIENT_ENV, cwd=fleet.dir,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            at.wait(60)
            assert taps[0].killed.is_set()
            procs[1].communicate(timeout=10)   # killed as it sent its RESULT of round 2
            out, err = procs[2].communicate(timeout=20)
            assert procs[2].returncode == 0 and f"{rounds} round(s)" in out, out + err
            for p in procs[1 + n_c:]:
                assert p.wait(timeout=20) == 0, client_logs(procs[1 + n_c:])
            procs[0].terminate()
            _, bridge_err = procs[0].communicate(timeout=10)
    finally:
        stop_all(procs)
        for t in taps:
            t.close()
        for master, slave in ptys:
            os.close(master)
            os.close(slave)
    assert procs[0].returncode == 0, bridge_err
    stopped = bridge_err.strip().splitlines()[-1]
    assert stopped.startswith("bridge stopped:") and "'proxy_updates': 3" in stopped, bridge_err

    ck = state.load(os.path.join(fleet.dir, "state"))
    assert ck.round == rounds
    survivors = {1: list(range(n)), 2: [1, 2, 3]}
    for r, row in enumerate(ck.metrics, 1):
        assert row["secagg_outcome"] == "applied" and row["survivors"] == len(survivors[r]), row
    assert ck.metrics[1]["secagg_stages"]["shares"] == n and ck.metrics[1]["secagg_stages"]["masked"] == n - 1

    from fedtiny import model as model_mod
    g = gridmod.Grid.for_round(clip, n)
    net_model = model_mod.build("mlp:64-10")
    w = net_model.init(0).astype(np.float32)
    for r in range(1, rounds + 1):
        total = np.zeros(w.size, np.int64)
        for k in survivors[r]:
            key = gridmod.derived_round_key(0, r, k)
            if k < n_c:
                delta = np.fromfile(tmp_path / f"delta{k}.r{r}", dtype="<f4")
                q, int8_values = _int8_then_grid(delta, "nearest", 0, clip, g, key)
                # (2) blind: the frames this device's proxy sent in round r
                frames = [f for f in up[k] if f.round == r]
                assert {f.type for f in frames} <= {M.HELLO, M.ACK, M.SECAGG_KEYS, M.SECAGG_SHARES, M.MASKED_UPDATE,
                                                     M.SECAGG_UNMASK_SHARES}, {f.type for f in frames}
                masked = {f.chunk_index: f.payload for f in frames if f.type == M.MASKED_UPDATE}
                vec = np.frombuffer(b"".join(masked[i] for i in sorted(masked)), dtype="<u2")
                assert vec.size == w.size
                corr = np.corrcoef(centered(vec, 16).astype(np.float64), q.astype(np.float64))[0, 1]
                assert abs(corr) < 0.2, corr   # ~N(0, 1/sqrt(650)) for an unrelated vector
                needle = int8_values[:64].tobytes()
                assert all(needle not in f.payload for f in up[k]), "the device's int8 values crossed the UDP path"
            else:
                q = clipped_grid(client_delta(net_model, w, fleet.data[k], r, k), clip, g.step, g.qmax, key)
            total += q
        w = (w.astype(np.float64) + total * g.step / len(survivors[r])).astype(np.float32)
    np.testing.assert_allclose(ck.weights, w, rtol=0, atol=2e-6)
    # the proxied devices never sent a plain update on the UDP path in any round
    for k in range(n_c):
        assert not {f.type for f in up[k]} & {M.RESULT, M.UPDATE_CHUNK}


def _client(server, k, fleet):
    from fedtiny.net.demo import client_command
    return client_command(server, k, fleet.keyfile, fleet.data[k], "mlp:64-10")


def _cobs(frame: bytes) -> bytes:
    return wire.cobs_frame(frame)


def test_aggregator_killed_and_restarted_mid_run_the_proxied_device_goes_on(tmp_path, firmware):
    """A real `fedtiny aggregate --secagg` process, one C device (no SecAgg+) behind a real
    `fedtiny bridge --secagg-proxy` and two `fedtiny client` processes. With one client frozen
    (SIGSTOP) so that the open round r + 1 cannot close, after its SETUP reached the others, the
    aggregator is killed (-9) and started again on the same --state, which opens round r + 1 again
    with a new SETUP (the client resumes): the proxy and the clients notice the new aggregator life
    (a new epoch) and forget the old life's round, so every round from r + 1 on is applied with all three devices,
    the C device's masked vector among them; every process ends cleanly. (Before the clients forgot
    it, they kept the old SETUP and the new round r + 1 was abandoned with too few keys.)"""
    import signal
    from netutil import free_udp_port, wait_for
    from serial_fleet import SerialFleet
    n, rounds = 3, 4
    fleet = Fleet(tmp_path, n)
    state_dir = os.path.join(fleet.dir, "state")
    port = free_udp_port()
    server = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", server, "--model", "mlp:64-10",
           "--rounds", str(rounds), "--min-clients", str(n), "--keys", fleet.keyfile, "--state", state_dir,
           "--dataset", "digits", "--lr", "0.05", "--batch", "10", "--seed", "0", "--secagg", "--clip-norm", "1.0",
           "--round-timeout", "30", "--secagg-stage-timeout", "15"]
    log_path = tmp_path / "aggregate.log"

    def start_aggregator():
        with open(log_path, "a") as out:
            return subprocess.Popen(cmd, env=CLIENT_ENV, cwd=fleet.dir, stdout=out, stderr=subprocess.STDOUT)

    def rounds_done() -> int:
        try:
            ck = state.load(state_dir)
        except ValueError:   # being written
            return 0
        return 0 if ck is None else ck.round

    procs = [start_aggregator()]
    # the device counts the round it did in the dead life too: it stops when told training is finished
    with SerialFleet(fleet, firmware, server, [0], rounds + 2, timeout=90,
                     bridge_args=["--secagg-proxy", "--keys", fleet.keyfile]) as sf:
        try:
            procs += [subprocess.Popen(_client(server, k, fleet), env=CLIENT_ENV, cwd=fleet.dir,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                      for k in range(1, n)]
            wait_for(lambda: rounds_done() >= 1, 90, "a secure round")
            os.kill(procs[2].pid, signal.SIGSTOP)   # client 2 frozen: the open round cannot close ...
            time.sleep(1.0)
            r = rounds_done()
            wait_for(lambda: f"round {r + 1}: 3 device(s) selected" in log_path.read_text(), 30, f"round {r + 1}")
            time.sleep(0.5)                          # ... and the others hold its SETUP
            assert rounds_done() == r
            procs[0].send_signal(signal.SIGKILL)     # the aggregator dies with round r + 1 open
            procs[0].wait()
            procs[0] = start_aggregator()            # it opens round r + 1 again, with a new SETUP
            os.kill(procs[2].pid, signal.SIGCONT)
            assert procs[0].wait(timeout=120) == 0, log_path.read_text()[-3000:]
            out, err = sf.devices[0].communicate(timeout=30)
            assert sf.devices[0].returncode == 0, out + err
            for p in procs[1:]:
                assert p.wait(timeout=30) == 0, client_logs(procs[1:])
            sf.bridge.terminate()
            _, bridge_err = sf.bridge.communicate(timeout=10)
        finally:
            stop_all(procs)
    assert sf.bridge.returncode == 0, bridge_err
    assert "epoch 2" in log_path.read_text()            # the second life resumed the run
    ck = state.load(state_dir)
    assert ck.round == rounds
    late = [row for row in ck.metrics if row["round"] > r]
    assert len(late) == rounds - r and all(row["secagg_outcome"] == "applied" and row["survivors"] == n for row in late), (
        late, log_path.read_text()[-4000:])
    assert all(row["secagg_stages"]["masked"] == n for row in late), late


def test_proxy_refuses_device_frames_it_cannot_verify(tmp_path):
    """The test plays a device on a pty behind `fedtiny bridge --secagg-proxy`: it joins the real
    aggregator through the bridge, then sends frames the bridge cannot verify: a join HELLO under a
    wrong key, an in-session frame with a bad tag, a replayed frame, a frame naming another device,
    a device without a key. Each is refused by the bridge (counted by reason, one log line per
    reason) and never reaches the aggregator; a valid frame after them still passes."""
    fleet = Fleet(tmp_path, 2)
    master, slave = os.openpty()
    _raw(master)
    _raw(slave)
    procs = []
    psk = fleet.keys[0]
    try:
        with AggregatorThread(fleet.config(model="mlp:64-10", rounds=1, min_clients=2, secagg=True, clip_norm=1.0,
                                           codec="int8", round_timeout=30)) as at:
            procs.append(subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "bridge", "--server", at.server,
                                           "--secagg-proxy", "--keys", fleet.keyfile, "--serial", os.ttyname(slave)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=fleet.dir))
            dec = wire.StreamDecoder()

            def read_frame(timeout=5.0):
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    import select
                    if select.select([master], [], [], 0.1)[0]:
                        for fr in dec.feed(os.read(master, 4096)):
                            return fr
                raise AssertionError("no frame from the bridge")

            nonce = session.new_nonce()
            hello = wire.Hello(n_samples=100, nonce=nonce)
            welcome = None
            for _ in range(20):   # the bridge needs a moment to open the port
                os.write(master, _cobs(session.join_hello(0, psk, hello)))
                try:
                    welcome = session.open_welcome(read_frame(1.0), psk, nonce)
                    break
                except AssertionError:
                    continue
            assert welcome is not None
            s = session.Session(0, psk, welcome, follow_rounds=True)
            first = s.seal(session.HELLO, 0, wire.Hello(n_samples=100, nonce=bytes(8)).pack())
            os.write(master, _cobs(first))   # makes the session current at the aggregator
            time.sleep(0.3)
            bad = {
                "bad_tag": wire.encode(session.HELLO, 0, 0, 50, hello.pack(), bytes(range(32)), session=s.number,
                                       epoch=s.epoch, run=s.run),
                "replay": first,
                "no_session": wire.encode(session.HELLO, 1, 0, 51, hello.pack(), fleet.keys[1], session=s.number,
                                          epoch=s.epoch, run=s.run),
                "unknown_device": session.join_hello(99, bytes(16), hello),
                "join_bad_tag": session.join_hello(0, bytes(16), hello),
            }
            for frame in bad.values():
                for _ in range(3):
                    os.write(master, _cobs(frame))
            os.write(master, _cobs(s.seal(session.HELLO, 0, wire.Hello(n_samples=100, nonce=bytes(8)).pack())))
            time.sleep(0.5)
            agg_rejected = dict(at.agg.rejected)
            procs[0].terminate()
            _, err = procs[0].communicate(timeout=10)
    finally:
        stop_all(procs)
        os.close(master)
        os.close(slave)
    assert procs[0].returncode == 0, err
    stopped = err.strip().splitlines()[-1]
    counts = ast.literal_eval(stopped.removeprefix("bridge stopped: "))   # a dict's repr
    assert counts["proxy_device_bad_tag"] == 6 and counts["proxy_device_replay"] == 3, counts   # 3 + 3 join HELLOs
    assert counts["proxy_device_no_session"] == 3 and counts["proxy_device_unknown_device"] == 3, counts
    warnings = [line for line in err.splitlines() if "refused a frame from the device" in line]
    assert len(warnings) == 4, err   # one line per reason
    # nothing the bridge refused reached the aggregator; the valid frames did
    assert not set(agg_rejected) & {"bad_tag", "replay", "unknown_device"}, agg_rejected
    assert counts["to_aggregator"] >= 3, counts


def test_bridge_proxy_arguments_are_checked(tmp_path):
    for args in (["--secagg-proxy"], ["--keys", str(tmp_path / "keys")]):
        r = subprocess.run([sys.executable, "-m", "fedtiny.cli", "bridge", "--server", "127.0.0.1:9", "--serial",
                            "/dev/null", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "--secagg-proxy and --keys FILE go together" in r.stderr, r.stderr


def test_cortex_m4_board_built_without_secagg_takes_part_through_the_proxy(tmp_path):
    """The board image of the 32 KB part (mps2-an386, SECAGG=0: no SecAgg+ code in its flash) booted
    in qemu-system-arm, on an unpaced pty, through `fedtiny bridge --secagg-proxy`, with one
    `fedtiny client`, in 3 rounds of `fedtiny aggregate --secagg`: every round applied with both
    devices as survivors, the board's update taken off its serial line by the proxy each round,
    the model learning. (The exact sum against the numpy oracle is checked with the host build
    above: the board's float arithmetic is not the host's bit for bit.)"""
    from board_qemu import ARM_CC, QEMU, ROUND_LINE, Board, build
    from netutil import free_udp_port
    from serial_relay import PacedRelay
    if not (QEMU and ARM_CC):
        pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi")
    elf = build(str(tmp_path / "mps2"))   # SECAGG=0, the board default
    rounds = 3
    fleet = Fleet(tmp_path, 2)
    image = os.path.join(fleet.dir, "device0.bin")
    write_device_data(fleet.data[0], 0, fleet.keys[0], image)
    board = Board(elf, image, fleet.dir, icount=False)
    line = PacedRelay(board.tty, None).__enter__()
    port = free_udp_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}", "--model", "mlp:64-10",
             "--rounds", str(rounds), "--min-clients", "2", "--keys", fleet.keyfile, "--state",
             os.path.join(fleet.dir, "state"), "--dataset", "digits", "--lr", "0.1", "--batch", "10", "--seed", "0",
             "--secagg", "--clip-norm", "1", "--codec", "int8-stochastic", "--round-timeout", "30"],
            cwd=fleet.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fedtiny.cli", "bridge", "--server", f"127.0.0.1:{port}", "--serial", line.path,
             "--secagg-proxy", "--keys", fleet.keyfile], cwd=fleet.dir, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
        procs.append(subprocess.Popen(_client(f"127.0.0.1:{port}", 1, fleet), env=CLIENT_ENV, cwd=fleet.dir,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        out, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 0, out + err
        procs[1].terminate()
        _, bridge_err = procs[1].communicate(timeout=10)
    finally:
        stop_all(procs)
        board.stop()
        line.__exit__(None, None, None)
    rows = state.load(os.path.join(fleet.dir, "state")).metrics
    print("\nboard through the proxy:", [(r["secagg_outcome"], r["survivors"], r["test_acc"]) for r in rows],
          bridge_err.strip().splitlines()[-1])
    assert [(r["secagg_outcome"], r["survivors"]) for r in rows] == [("applied", 2)] * rounds, rows
    assert f"'proxy_updates': {rounds}" in bridge_err, bridge_err
    fw = [m for m in map(ROUND_LINE.search, board.lines) if m]
    assert [int(m.group(2)) for m in fw] == list(range(1, rounds + 1)), board.log()
    accs = [r["test_acc"] for r in rows]
    assert accs[-1] > accs[0] and accs[-1] > 0.5, accs


def test_proxy_session_offer_and_update_in_process():
    """DeviceProxy between a device Session and an aggregator Session (the real frame codec, keys
    and sessions; the two sides' frames collected in lists): the WELCOME opens its sessions, a
    secure OFFER reaches the device as a plain int8 one, the device's RESULT and update chunks never
    go up, a chunk breaking the int8 reader rule or of the wrong length is refused by reason, the
    complete update is ACKed to the device and goes to the SecAgg+ stage (as the float32 delta the
    codec decodes), a repeated OFFER of that round is answered 'waiting', and a WELCOME of another
    aggregator life forgets the round."""
    from collections import Counter
    from fedtiny import codec
    from fedtiny.net import bridge_secagg, keys as keys_mod
    psk = keys_mod.parse_keys(keys_mod.generate([5]))[5]
    down, up, counts = [], [], Counter()
    proxy = bridge_secagg.DeviceProxy("tty-test", {5: psk}, counts, down.append, up.append)
    nonce = session.new_nonce()
    proxy.from_device(session.join_hello(5, psk, wire.Hello(n_samples=40, nonce=nonce)))
    assert len(up) == 1 and wire.peek(up[0]).session == 0
    w = wire.Welcome(bytes(range(8)), 1, 3, nonce, bytes(range(8, 16)))
    proxy.from_aggregator(session.welcome_frame(5, psk, w))
    assert down == [session.welcome_frame(5, psk, w)]
    agg = session.Session(5, psk, w, follow_rounds=True)
    dev = session.Session(5, psk, w, follow_rounds=True)
    n = 650
    offer = wire.Offer(n_params=n, model_hash=bytes(16), lr=0.1, epochs=1, batch_size=10, deadline_ms=9000, seed=4,
                       codec_flags=1, fixed_scale=1.0, up_codec=wire.CODEC_INT8)
    proxy.from_aggregator(agg.seal(session.OFFER, 2, offer.pack()))
    got = wire.Offer.unpack(dev.open(down[-1]).payload)
    assert (got.fixed_scale, got.up_codec, got.codec_flags, got.seed) == (0.0, wire.CODEC_INT8, 1, 4)
    assert got.update_chunks == wire.update_chunks(n, wire.CODEC_INT8) and got.n_params == n
    delta = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.01
    upd = codec.encode(delta, rounding="stochastic", seed=9)
    n_chunks = wire.update_chunks(n, wire.CODEC_INT8)
    res = wire.Result(n_samples=40, loss=0.5, steps=4, update_seed=9, update_flags=1, update_chunks=n_chunks)
    proxy.from_device(dev.seal(session.RESULT, 2, res.pack()))
    ack = wire.Ack.unpack(dev.open(down[-1]).payload)
    assert ack.acked_type == M.UPDATE_CHUNK and ack.missing() == list(range(n_chunks))
    chunk0 = wire.update_chunk(upd.blocks, 0)
    bad = bytearray(chunk0)
    bad[4] = 0x80   # an int8 -128: outside the codec's range
    proxy.from_device(dev.seal(session.UPDATE_CHUNK, 2, bytes(bad), 0, n_chunks))
    proxy.from_device(dev.seal(session.UPDATE_CHUNK, 2, chunk0[:-codec.BLOCK_BYTES], 0, n_chunks))   # a block short
    assert counts["proxy_device_bad_value"] == 1 and counts["proxy_device_bad_chunk"] == 1, counts
    assert proxy.secagg is None or proxy.secagg.delta is None
    for i in range(n_chunks):
        proxy.from_device(dev.seal(session.UPDATE_CHUNK, 2, wire.update_chunk(upd.blocks, i), i, n_chunks))
    ack = wire.Ack.unpack(dev.open(down[-1]).payload)
    assert ack.missing() == [] and counts["proxy_updates"] == 1
    assert proxy.secagg.round == 2 and np.array_equal(proxy.secagg.delta, upd.decode())   # waits for SHARE_LIST
    assert all(wire.peek(f).type not in (M.RESULT, M.UPDATE_CHUNK) for f in up)
    proxy.from_aggregator(agg.seal(session.OFFER, 2, offer.pack()))   # the device's HELLO asked again
    f = dev.open(down[-1])
    assert f.type == M.ERROR and wire.ErrorMsg.unpack(f.payload).code == session.E_NOT_SELECTED
    # a plain round passes through, re-sealed, its OFFER unchanged
    plain = dataclasses.replace(offer, fixed_scale=0.0, codec_flags=0)
    proxy.from_aggregator(agg.seal(session.OFFER, 3, plain.pack()))
    assert dev.open(down[-1]).payload == plain.pack()
    # the aggregator restarted (epoch 2): round 2 is a new round
    nonce = session.new_nonce()
    proxy.from_device(session.join_hello(5, psk, wire.Hello(n_samples=40, nonce=nonce)))
    w2 = wire.Welcome(bytes(range(8)), 2, 1, nonce, bytes(range(8, 16)))
    proxy.from_aggregator(session.welcome_frame(5, psk, w2))
    agg, dev = session.Session(5, psk, w2, follow_rounds=True), session.Session(5, psk, w2, follow_rounds=True)
    proxy.from_aggregator(agg.seal(session.OFFER, 2, offer.pack()))
    assert wire.Offer.unpack(dev.open(down[-1]).payload).fixed_scale == 0.0   # offered, not 'waiting'
