"""`fedtiny bridge`: relays frames between serial devices and the aggregator over UDP.

Serial side: each frame travels as 0x00 COBS(frame + CRC-32) 0x00 (fedtiny.wire.cobs_frame /
StreamDecoder, the C codec); a broken line frame is dropped and counted, the decoder
resynchronises at the next delimiter. UDP side: one socket per serial port, so the aggregator
sees each device at its own address. The bridge holds no keys and changes no byte of a frame:
authentication is end to end between the device and the aggregator, and a device behind a
bridge is a participant like any other.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections import Counter

from . import wire
from .common import parse_hostport, setup_logging

log = logging.getLogger("fedtiny.bridge")


class _Uplink(asyncio.DatagramProtocol):
    def __init__(self, port: "SerialPort"):
        self.port = port

    def datagram_received(self, data: bytes, addr) -> None:
        self.port.to_device(data)

    def error_received(self, exc) -> None:  # the aggregator is not there (yet): devices retry
        log.debug("%s: %s", self.port.path, exc)


class SerialPort:
    """One serial line: bytes in -> frames -> UDP; datagrams -> COBS line bytes out."""

    def __init__(self, path: str, baudrate: int, counts: Counter):
        import serial  # pyserial: pip install 'fedtiny[serial]'
        self.path = path
        self.counts = counts
        self.serial = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=1)
        self.decoder = wire.StreamDecoder()
        self.udp = None

    async def start(self, server: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(lambda: _Uplink(self), remote_addr=server)
        loop.add_reader(self.serial.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.serial.read(4096)
        except OSError as exc:   # the device was unplugged
            log.warning("%s: %s", self.path, exc)
            asyncio.get_running_loop().remove_reader(self.serial.fileno())
            return
        errors_before = sum(self.decoder.errors.values())
        for frame in self.decoder.feed(data):
            if len(frame) > wire.MAX_FRAME:
                self.counts["oversize"] += 1
                continue
            self.udp.sendto(frame)
            self.counts["to_aggregator"] += 1
        if sum(self.decoder.errors.values()) != errors_before:
            for reason, n in self.decoder.errors.items():
                self.counts[f"serial_{reason}"] = n
            log.info("%s: serial frames dropped so far: %s", self.path, dict(self.decoder.errors))

    def to_device(self, frame: bytes) -> None:
        if len(frame) > wire.MAX_FRAME:
            self.counts["oversize"] += 1
            return
        try:
            self.serial.write(wire.cobs_frame(frame))
            self.counts["to_device"] += 1
        except Exception as exc:  # pyserial raises SerialException / SerialTimeoutException
            self.counts["serial_write_failed"] += 1
            log.warning("%s: write failed: %s", self.path, exc)

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.serial.fileno())
        except (RuntimeError, ValueError, OSError):
            pass
        if self.udp is not None:
            self.udp.close()
        self.serial.close()


async def relay(paths: list[str], server: tuple[str, int], *, baudrate: int = 115200,
                stop: asyncio.Event | None = None, counts: Counter | None = None) -> Counter:
    counts = Counter() if counts is None else counts
    stop = stop or asyncio.Event()
    ports = []
    try:
        for path in paths:
            port = SerialPort(path, baudrate, counts)
            ports.append(port)
            await port.start(server)
            log.info("relaying %s <-> %s:%d", path, *server)
        await stop.wait()
    finally:
        for port in ports:
            port.close()
    return counts


HELP = "relay serial devices (COBS frames) to the aggregator over UDP"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serial", action="append", required=True, metavar="DEVICE",
                   help="serial port of a device (repeat for several), e.g. /dev/ttyACM0")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the aggregator")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--verbose", "-v", action="store_true")


def run_command(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    server = parse_hostport(args.server, "--server")
    try:
        import serial  # noqa: F401
    except ImportError:
        raise ValueError("fedtiny bridge needs pyserial: pip install 'fedtiny[serial]'") from None

    async def main() -> Counter:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await relay(args.serial, server, baudrate=args.baud, stop=stop)

    try:
        counts = asyncio.run(main())
    except Exception as exc:
        if type(exc).__name__ == "SerialException":
            raise ValueError(str(exc)) from None
        raise
    print(f"bridge stopped: {dict(counts)}", file=sys.stderr)
    return 0
