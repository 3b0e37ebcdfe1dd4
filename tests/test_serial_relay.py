"""tests/serial_relay.py, the paced line the board tests rely on: bytes take 10 bit times each
(start, 8 data, stop) at the baud rate, never less, and arrive intact and in order."""
import os
import select
import time

import pytest

from serial_relay import PacedRelay, raw


@pytest.mark.parametrize("baud,n", [(115200, 4000), (9600, 600)])
def test_relay_paces_bytes_at_the_baud_rate(baud, n):
    master, slave = os.openpty()
    raw(master)
    raw(slave)
    payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
    try:
        with PacedRelay(os.ttyname(slave), baud) as line:
            bridge_end = os.open(line.path, os.O_RDWR | os.O_NOCTTY)
            raw(bridge_end)
            try:
                t0 = time.monotonic()
                os.write(bridge_end, payload)
                got = b""
                while len(got) < n and time.monotonic() - t0 < 30:
                    if select.select([master], [], [], 1)[0]:
                        got += os.read(master, 65536)
                elapsed = time.monotonic() - t0
            finally:
                os.close(bridge_end)
            assert line.counts()["to_device"] == n
    finally:
        os.close(master)
        os.close(slave)
    assert got == payload
    ideal = n * 10 / baud
    assert ideal * 0.97 <= elapsed < ideal * 3, (elapsed, ideal)   # never faster than the line; late only on a busy host
