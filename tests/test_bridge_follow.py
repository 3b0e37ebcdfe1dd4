"""`fedtiny bridge` follows its device: a real pseudo-terminal behind a stable name (a symlink, as
/dev/serial/by-id/... is) goes away and comes back; the bridge logs once, relays again in both
directions when the device is back, and stops cleanly on SIGTERM."""
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from fedtiny.net import session, wire

pytest.importorskip("serial", reason="fedtiny bridge needs pyserial (pip install 'fedtiny[serial]')")
KEY = bytes(range(32))


def plug(link: str) -> int:
    """A new pty named by link (its slave side, which the bridge opens); returns the master."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(name, link)
    return master


def frame(seq: int) -> bytes:
    """A join HELLO of device 7 (the bridge relays it unchanged; only the aggregator opens it)."""
    hello = wire.Hello(100, nonce=seq.to_bytes(wire.NONCE_BYTES, "little"))
    return session.join_hello(7, KEY, hello)


def until_relayed(master: int, agg: socket.socket, seq: int, timeout: float = 10.0):
    """Write the device's frame (again) until the aggregator side receives it; (frame, bridge address)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        os.write(master, wire.cobs_frame(frame(seq)))
        try:
            data, addr = agg.recvfrom(2048)
        except socket.timeout:
            continue
        return data, addr
    raise AssertionError(f"frame {seq} never reached the aggregator side")


def read_line(master: int, timeout: float = 5.0) -> bytes:
    end, buf = time.monotonic() + timeout, b""
    while time.monotonic() < end and buf.count(b"\0") < 2:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            buf += os.read(master, 4096)
    return buf


def test_bridge_reopens_a_device_that_went_away_and_stops_on_sigterm(tmp_path):
    link = str(tmp_path / "ttyDEVICE")
    agg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agg.bind(("127.0.0.1", 0))
    agg.settimeout(0.3)
    master = plug(link)
    bridge = subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "bridge", "--serial", link, "--server",
                               f"127.0.0.1:{agg.getsockname()[1]}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        data, addr = until_relayed(master, agg, 1)
        assert data == frame(1)
        # the device goes away: its tty hangs up and its name disappears
        os.close(master)
        os.unlink(link)
        time.sleep(2.0)   # several reopen attempts while it is away
        agg.sendto(frame(99), addr)   # the aggregator talks to a device that is not there: dropped
        time.sleep(0.3)
        assert bridge.poll() is None, bridge.stderr.read()
        # it comes back as a different tty under the same name
        master = plug(link)
        data, addr2 = until_relayed(master, agg, 2)
        assert data == frame(2) and addr2 == addr   # the same UDP address: the aggregator sees one device
        agg.sendto(frame(3), addr)
        line = read_line(master)
        assert wire.cobs_frame(frame(3)) in line, line
        bridge.send_signal(signal.SIGTERM)
        _, err = bridge.communicate(timeout=10)
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.communicate()
        agg.close()
        os.close(master)
    assert bridge.returncode == 0, err
    assert err.count("went away") == 1, err          # logged once, not once per attempt
    assert err.count("is back") == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bridge stopped:") and "'device_gone': 1" in last and "'device_back': 1" in last, err
    assert "'device_away': 1" in last, err
