"""The aggregator's per-datagram path in C (firmware_bridge/host/ft_rx.c), seen from Python.

The C side drains the socket in batches (recvmmsg), checks each datagram cheapest first (size,
header, device id, per-source limit, tag, round, replay) and stages update chunks straight into
the run's staging slots (fedtiny.net.ingest.Staging); cffi releases the GIL for the call.
Python sees events, not datagrams: an authentic frame of a device's current session it must act
on (RESULT, ACK, ERROR, a chunk from a device without a slot or outside the open round), a
datagram the C path does not check itself (a join HELLO, the first frame of a new session, an
in-session HELLO: the Python path handles it), an ACK that is due, an update that is complete;
and the counts of what was dropped, by reason.
"""
from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .._wire import ffi, lib
from . import wire
from .ingest import Staging

EVENT_FRAME, EVENT_ACK_DUE, EVENT_COMPLETE, EVENT_RAW = (lib.FT_RX_EV_FRAME, lib.FT_RX_EV_ACK_DUE,
                                                       lib.FT_RX_EV_COMPLETE, lib.FT_RX_EV_RAW)
RX_REASONS = [ffi.string(lib.ft_rx_reason_name(r)).decode() for r in range(lib.FT_RX_N_REASONS)]
SOURCE_TABLE = 4096        # sources remembered for the per-source limit (fixed memory: 128 KiB)
SOURCE_BURST = 256.0       # failed datagrams a source may send before it is limited ...
SOURCE_RATE = 64.0         # ... and per second after that; its other datagrams are dropped unread
SOURCE_BLOCK = 1.0         # seconds a source out of tokens is blocked in the kernel (Linux socket filter)
EVENTS = 256               # event buffer: one poll returns at most this many


@dataclass(frozen=True)
class Event:
    kind: int
    device_id: int
    addr: tuple
    frame: wire.Frame | None      # EVENT_FRAME: the authentic frame
    raw: bytes = b""              # EVENT_RAW: the datagram


class Receiver:
    """The C receive path of one aggregator: its device table (keys, replay guards, slots), the
    per-source table and the run's staging memory."""

    def __init__(self, keys: dict[int, bytes], staging: Staging, *, ack_every: int,
                 source_burst: float = SOURCE_BURST, source_rate: float = SOURCE_RATE,
                 source_block: float | None = None):
        self.ids = sorted(int(d) for d in keys)
        self.index = {d: i for i, d in enumerate(self.ids)}
        self._devs = ffi.new("ft_rx_device[]", max(1, len(self.ids)))
        for i, d in enumerate(self.ids):
            dev = self._devs[i]
            dev.device_id = d
            dev.key_len = 0          # no session yet: its frames go to Python until one is current
            dev.slot = -1
            dev.guard = ffi.NULL
        self._guards: dict[int, object] = {}   # device -> the session whose guard C points to
        self._sources = ffi.new("ft_rx_source[]", SOURCE_TABLE)
        self._rx = rx = ffi.new("ft_rx *")
        rx.devices, rx.n_devices = self._devs, len(self.ids)
        rx.sources, rx.n_sources = self._sources, SOURCE_TABLE
        rx.source_burst, rx.source_rate = source_burst, source_rate
        rx.block_seconds = SOURCE_BLOCK if source_block is None else source_block   # 0: no kernel block
        rx.ack_every = ack_every
        self.staging = staging
        rx.codec = staging.up_codec
        rx.n_blocks = staging.n_blocks
        rx.n_chunks = staging.n_chunks
        rx.n_slots = staging.slots
        rx.slot_stride = staging.buf.shape[1]
        assert lib.FT_RX_HEADER_BYTES == staging.buf.shape[1] - staging.nbytes
        self._keep = (ffi.from_buffer(staging.buf), ffi.from_buffer(staging.received),
                      ffi.from_buffer(staging.count))
        rx.staging = ffi.cast("uint8_t *", self._keep[0])
        rx.received = ffi.cast("uint8_t *", self._keep[1])
        rx.count = ffi.cast("uint32_t *", self._keep[2])
        self._events = ffi.new("ft_rx_event[]", EVENTS)
        self._n = ffi.new("uint32_t *")
        self._wire_counts = np.frombuffer(ffi.buffer(rx.wire_rejects), dtype=np.uint64)
        self._rx_counts = np.frombuffer(ffi.buffer(rx.rx_rejects), dtype=np.uint64)
        self._seen_wire = self._wire_counts.copy()
        self._seen_rx = self._rx_counts.copy()
        self._seen_bytes = 0
        self._fd = -1                                # the socket polled (its kernel drop counter)
        self._seen_kernel = 0
        self._blocking = False                       # a source was blocked at the last count
        self.overflow_drops = 0    # datagrams the kernel dropped for want of room, no source blocked

    # -- the life, sessions, the round ------------------------------------------------------------
    def set_life(self, run_tag: int, epoch: int) -> None:
        self._rx.run, self._rx.epoch = run_tag, epoch

    def set_session(self, device_id: int, sess) -> None:
        """The device's current session (fedtiny.net.session.Session): C checks its frames with
        the session's key and the session's own replay guard (one guard, shared with Python)."""
        i = self.index[device_id]
        dev = self._devs[i]
        key = bytes(sess.key)
        ffi.memmove(dev.key, key, len(key))
        dev.key_len = len(key)
        dev.session = sess.number
        dev.guard = sess.guard._g
        self._guards[device_id] = sess     # keeps the guard's memory alive

    def start_round(self, round_id: int, selected) -> None:
        """Chunks of the selected devices for round_id are staged in C (their guards are moved
        to the round by their sessions, Session.new_round)."""
        self._rx.round = round_id
        self._rx.round_open = 1
        for d in selected:
            i = self.index.get(d)
            if i is not None:
                dev = self._devs[i]
                dev.selected, dev.since_ack, dev.slot = 1, 0, -1

    def close_round(self) -> None:
        self._rx.round_open = 0
        for i in range(len(self.ids)):
            self._devs[i].selected = 0
            self._devs[i].slot = -1

    def set_slot(self, device_id: int, index: int) -> None:
        i = self.index.get(device_id)
        if i is not None:
            self._devs[i].slot = index
            self._devs[i].since_ack = 0

    # -- the socket ----------------------------------------------------------------------------
    def poll(self, fd: int, now: float, max_datagrams: int = 4096) -> tuple[list[Event], bool]:
        """Handle what the socket holds (up to max_datagrams): the events, and whether more waits."""
        if self._fd != fd:
            self._fd = fd
            self._seen_kernel = self.kernel_drops()
        st = lib.ft_rx_poll(self._rx, fd, now, max_datagrams, self._events, EVENTS, self._n)
        if st < 0:
            raise OSError(-st, f"receiving on the aggregator's socket: {socket.errno.errorcode.get(-st, st)}")
        out = []
        for k in range(self._n[0]):
            ev = self._events[k]
            device_id = self.ids[ev.device_index]
            raw = bytes(ev.addr)
            addr = ((socket.inet_ntop(socket.AF_INET, raw[:4]) if ev.family == 4
                     else socket.inet_ntop(socket.AF_INET6, raw)), ev.port)
            frame, raw = None, b""
            if ev.kind == EVENT_FRAME:
                h = ev.hdr
                frame = wire.Frame(wire.MsgType(h.type), h.device_id, h.round, h.seq, h.chunk_index, h.chunk_count,
                                   bytes(ffi.buffer(ev.data, h.payload_len)), h.session, h.epoch, h.run)
            elif ev.kind == EVENT_RAW:
                raw = bytes(ffi.buffer(ev.data, ev.len))
            out.append(Event(ev.kind, device_id, addr, frame, raw))
        return out, st == 1

    def penalize(self, addr, now: float) -> None:
        """A datagram from addr that the Python path refused: it costs its source a token."""
        host, port = addr[0], addr[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        raw = socket.inet_pton(family, host)
        lib.ft_rx_penalize(self._rx, 6 if family == socket.AF_INET6 else 4, raw + bytes(16 - len(raw)), port, now)

    def take_counts(self) -> tuple[Counter, int]:
        """Datagrams dropped by reason and bytes received since the last call."""
        dropped: Counter[str] = Counter()
        w, r = self._wire_counts, self._rx_counts
        if (w != self._seen_wire).any():
            for i in np.flatnonzero(w != self._seen_wire):
                dropped[wire.REASONS.get(-int(i), "unknown_status")] += int(w[i] - self._seen_wire[i])
            self._seen_wire = w.copy()
        if (r != self._seen_rx).any():
            for i in np.flatnonzero(r != self._seen_rx):
                dropped[RX_REASONS[i]] += int(r[i] - self._seen_rx[i])
            self._seen_rx = r.copy()
        kernel = self.kernel_drops()
        blocking = self._rx.n_blocked > 0
        if kernel > self._seen_kernel:
            if blocking or self._blocking:   # a blocked source's (with any that found no room meanwhile)
                dropped["source_blocked"] += kernel - self._seen_kernel
            else:                            # no room in the receive buffer: the protocol resends
                self.overflow_drops += kernel - self._seen_kernel
        self._seen_kernel, self._blocking = kernel, blocking
        nbytes = int(self._rx.bytes) - self._seen_bytes
        self._seen_bytes = int(self._rx.bytes)
        return dropped, nbytes

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for the polled socket (Linux; 0 elsewhere): those of
        sources blocked by the socket filter and those that found the receive buffer full."""
        return max(0, int(lib.ft_rx_socket_drops(self._fd))) if self._fd >= 0 else 0

    @property
    def blocks(self) -> int:
        """Sources blocked in the kernel so far (each block lasts source_block seconds)."""
        return int(self._rx.blocks)

    @property
    def datagrams(self) -> int:
        return int(self._rx.datagrams)


class SocketSender:
    """sendto on the aggregator's non-blocking socket, in the shape of an asyncio transport. A
    full send buffer drops the datagram (the protocol resends what an ACK misses) and tells the
    pacer to wait (get_write_buffer_size() > 0 until the next successful send)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.blocked = False
        self.dropped = 0

    def sendto(self, data: bytes, addr) -> None:
        try:
            self.sock.sendto(data, addr)
            self.blocked = False
        except (BlockingIOError, InterruptedError):
            self.blocked = True
            self.dropped += 1
        except OSError:     # e.g. an unreachable peer: as a UDP transport, ignore
            pass

    def get_write_buffer_size(self) -> int:
        if self.blocked:
            self.blocked = False   # try again on the next tick
            return 1
        return 0

    def get_extra_info(self, name: str, default=None):
        if name == "socket":
            return self.sock
        if name == "sockname":
            return self.sock.getsockname()
        return default

    def close(self) -> None:
        self.sock.close()
