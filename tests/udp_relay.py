"""A lossy UDP relay for tests: sits between clients and the aggregator on 127.0.0.1 and drops,
duplicates and reorders datagrams in both directions, from a seeded random stream.

Each client address gets its own upstream socket, so the aggregator's replies find their way
back. Reordering holds a datagram back for a random few milliseconds while later ones pass.

`tap(direction, datagram)` sees every datagram as it was sent ("up": by a client, before any
loss; "down": by the aggregator). With `keys` (netutil.SessionKeys: it learns each session's key
from the WELCOMEs going down) the relay re-signs every upstream frame of a session with its own
sequence number, one fresh number per copy, and duplicates each UPDATE_CHUNK with probability
`chunk_duplicate`: such a duplicate passes the replay guard (it is a new, authentic frame) and
reaches the aggregator's duplicate-chunk check in ingest, which a byte-identical duplicate never
does. Join HELLOs (outside any session) pass unchanged.
"""
from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections import Counter


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram):
        self.on_datagram = on_datagram
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.on_datagram(data, addr)


class LossyRelay:
    """Run in its own thread: `with LossyRelay(server_addr, seed=1) as relay: relay.addr`."""

    def __init__(self, server: tuple[str, int], *, drop: float = 0.10, duplicate: float = 0.05,
                 reorder: float = 0.10, max_delay: float = 0.02, seed: int = 0, tap=None,
                 keys=None, chunk_duplicate: float = 0.0):
        self.server = server
        self.tap, self.keys, self.chunk_duplicate = tap, keys, chunk_duplicate
        self._seq: dict[tuple[int, int], int] = {}
        self.drop, self.duplicate, self.reorder, self.max_delay = drop, duplicate, reorder, max_delay
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.addr: tuple[str, int] | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LossyRelay":
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("relay did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        for t in list(self._upstreams.values()) + [self._front.transport]:
            t.transport.close() if isinstance(t, _Side) else t.close()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _start(self) -> None:
        self._upstreams: dict[tuple, _Side] = {}
        self._front = _Side(self._from_client)
        await self._loop.create_datagram_endpoint(lambda: self._front, local_addr=("127.0.0.1", 0),
                                                  family=socket.AF_INET)
        self.addr = self._front.transport.get_extra_info("sockname")[:2]

    def _from_client(self, data: bytes, client: tuple) -> None:
        if self.tap is not None:
            self.tap("up", data)
        up = self._upstreams.get(client)
        if up is None:
            up = _Side(lambda d, _a, c=client: self._forward(d, self._front.transport, c, "down"))
            self._upstreams[client] = up
            self._loop.create_task(self._loop.create_datagram_endpoint(
                lambda: up, remote_addr=self.server, family=socket.AF_INET)).add_done_callback(
                lambda _t, d=data, u=up: self._forward(d, u.transport, None, "up"))
            return
        if up.transport is None:
            self.counts["dropped_connecting"] += 1
            return
        self._forward(data, up.transport, None, "up")

    def _forward(self, data: bytes, transport, addr, direction: str) -> None:
        if direction == "down" and self.tap is not None:
            self.tap("down", data)
        if direction == "down" and self.keys is not None:
            self.keys.decode(data)   # learns the session a WELCOME opens
        if direction == "up" and self.keys is not None:
            self._forward_resigned(data, transport)
            return
        self._forward_one(data, transport, addr, direction)

    def _forward_resigned(self, data: bytes, transport) -> None:
        from fedtiny.net import wire   # only this mode needs the wire codec
        f = self.keys.decode(data)
        if f is None or f.session == 0:   # a join HELLO, or not ours to re-sign: as it is
            self._forward_one(data, transport, None, "up")
            return
        copies = 1
        if f.type == wire.MsgType.UPDATE_CHUNK and self.rng.random() < self.chunk_duplicate:
            copies = 2
            self.counts["resigned_duplicates"] += 1
        for _ in range(copies):
            k = (f.device_id, f.session)
            seq = self._seq[k] = self._seq.get(k, 0) + 1
            self._forward_one(self.keys.encode(f, seq), transport, None, "up")

    def _forward_one(self, data: bytes, transport, addr, direction: str) -> None:
        self.counts[direction] += 1
        r = self.rng.random()
        if r < self.drop:
            self.counts["dropped"] += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        if copies == 2:
            self.counts["duplicated"] += 1
        for _ in range(copies):
            if self.rng.random() < self.reorder:
                self.counts["reordered"] += 1
                self._loop.call_later(self.rng.uniform(0.001, self.max_delay), self._send, transport, data, addr)
            else:
                self._send(transport, data, addr)

    @staticmethod
    def _send(transport, data, addr) -> None:
        if not transport.is_closing():
            transport.sendto(data, addr)
