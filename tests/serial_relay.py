"""A serial line at its real speed for tests: relays bytes between a device's pseudo-terminal
(qemu's -serial pty) and a new one that `fedtiny bridge` opens, at 10 bits per byte (start bit,
8 data bits, stop bit) of a baud rate, each direction on its own (full duplex), and counts the
bytes each way. baud=None relays as fast as bytes come (the unpaced line).
"""
from __future__ import annotations

import os
import selectors
import termios
import threading
import time
import tty


def raw(fd: int) -> None:
    tty.setraw(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, mode)


class _Direction:
    def __init__(self, src: int, dst: int, byte_s: float | None):
        self.src, self.dst, self.byte_s = src, dst, byte_s
        self.queue = bytearray()
        self.next_t = 0.0     # when the line is free for the next byte
        self.moved = 0
        self.lines: list[tuple[float, int]] = []   # (time, bytes) of each 0x00-delimited line delivered
        self._line = 0

    def add(self, data: bytes, now: float) -> None:
        if not self.queue:
            self.next_t = max(self.next_t, now)   # an idle line does not save up time
        self.queue += data

    def due(self, now: float) -> float | None:
        """Seconds until bytes can be sent (0: now), None if nothing is queued."""
        if not self.queue:
            return None
        return 0.0 if self.byte_s is None else max(0.0, self.next_t - now)

    def pump(self, now: float) -> None:
        if not self.queue:
            return
        if self.byte_s is None:
            n = len(self.queue)
        else:
            if now < self.next_t:
                return
            n = min(len(self.queue), 1 + int((now - self.next_t) / self.byte_s))
        try:
            n = os.write(self.dst, bytes(self.queue[:n]))
        except BlockingIOError:
            return
        except OSError:   # EIO: the receiving end is gone (qemu stopped); the bytes are lost
            self.queue.clear()
            return
        for b in self.queue[:n]:
            self._line += 1
            if b == 0:
                if self._line > 1:
                    self.lines.append((now, self._line))
                self._line = 0
        del self.queue[:n]
        self.moved += n
        if self.byte_s is not None:
            self.next_t += n * self.byte_s


class PacedRelay:
    """`with PacedRelay(device_tty, baud=115200) as line: line.path` is the port for the bridge."""

    def __init__(self, device_tty: str, baud: int | None = None):
        byte_s = None if baud is None else 10.0 / baud
        self.dev = os.open(device_tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        raw(self.dev)
        self.master, self._slave = os.openpty()   # our slave stays open: the bridge may close and reopen
        raw(self.master)
        raw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.to_device = _Direction(self.master, self.dev, byte_s)
        self.from_device = _Direction(self.dev, self.master, byte_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PacedRelay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self.dev, self.master, self._slave):
            os.close(fd)

    def counts(self) -> dict[str, int]:
        return {"to_device": self.to_device.moved, "from_device": self.from_device.moved}

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sides = {self.dev: self.from_device, self.master: self.to_device}
        for fd in sides:
            sel.register(fd, selectors.EVENT_READ)
        while not self._stop.is_set():
            now = time.monotonic()
            waits = [w for w in (d.due(now) for d in sides.values()) if w is not None]
            timeout = min(waits + [0.05])
            for key, _ in sel.select(timeout):
                try:
                    data = os.read(key.fd, 65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:   # EIO: the other end is closed (qemu stopped); keep the rest going
                    sel.unregister(key.fd)
                    continue
                sides[key.fd].add(data, time.monotonic())
            now = time.monotonic()
            for d in sides.values():
                d.pump(now)
        sel.close()
