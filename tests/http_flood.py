"""A sustained connection flood at a status page (tests/test_flood.py), run as its own process:

    python tests/http_flood.py HOST PORT SECONDS WORKERS

WORKERS connection loops for SECONDS (or until SIGTERM), each one connection after another:
a GET of /status.json, /metrics or the page with the right Host, a request from a rebound name,
garbage, or a connection closed without a word. Prints "ready" once started, and at the end
one JSON line: {"answers": {code: count}, "connections": n, "refused": n, "seconds": s}."""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import time


def requests(host: bytes) -> list[bytes]:
    return [b"GET /status.json HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
            b"GET /status.json HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            b""]                                    # connect, then close at once


async def worker(k: int, host: str, port: int, end: float, stop: asyncio.Event, tally: dict) -> None:
    reqs = requests(f"{host}:{port}".encode())
    i = k
    while not stop.is_set() and time.monotonic() < end:
        req = reqs[i % len(reqs)]
        i += 1
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["refused"] += 1
            await asyncio.sleep(0.001)
            continue
        tally["connections"] += 1
        try:
            if req:
                writer.write(req)
                await writer.drain()
                head = await asyncio.wait_for(reader.readline(), 10)
                parts = head.split(b" ", 2)
                code = parts[1].decode() if len(parts) > 1 else "none"
                tally["answers"][code] = tally["answers"].get(code, 0) + 1
                await asyncio.wait_for(reader.read(), 10)     # the rest, until the server closes
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            tally["answers"]["broken"] = tally["answers"].get("broken", 0) + 1
        finally:
            writer.close()


async def main(host: str, port: int, seconds: float, workers: int) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tally = {"answers": {}, "connections": 0, "refused": 0}
    print("ready", flush=True)
    t0 = time.monotonic()
    await asyncio.gather(*(worker(k, host, port, t0 + seconds, stop, tally) for k in range(workers)))
    tally["seconds"] = time.monotonic() - t0
    return tally


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: http_flood.py HOST PORT SECONDS WORKERS")
    h, p, s, w = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    if not (s > 0 and w > 0):
        sys.exit("http_flood.py: SECONDS and WORKERS must be positive")
    print(json.dumps(asyncio.run(main(h, p, s, w))), flush=True)
