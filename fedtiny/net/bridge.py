"""`fedtiny bridge`: relays frames between serial devices and the aggregator over UDP.

Serial side: each frame travels as 0x00 COBS(frame + CRC-32) 0x00 (fedtiny.wire.cobs_frame /
StreamDecoder, the C codec); a broken line frame is dropped and counted, the decoder
resynchronises at the next delimiter. UDP side: one socket per serial port, so the aggregator
sees each device at its own address. The bridge holds no keys and changes no byte of a frame:
authentication is end to end between the device and the aggregator, and a device behind a
bridge is a participant like any other.

With --secagg-proxy --keys FILE (fedtiny.net.bridge_secagg) the bridge holds its devices' keys
and runs their SecAgg+ stage for them: a device too small for SecAgg+ keeps its plain protocol,
and the aggregator still sees only masked vectors (docs/secagg.md).
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
        if self.port.proxy is not None:
            self.port.proxy.from_aggregator(data)
        else:
            self.port.to_device(data)

    def error_received(self, exc) -> None:  # the aggregator is not there (yet): devices retry
        log.debug("%s: %s", self.port.path, exc)


REOPEN_SECONDS = 0.5   # how often the bridge looks for a device that went away


class SerialPort:
    """One serial line: bytes in -> frames -> UDP; datagrams -> COBS line bytes out.

    The device may go away (unplugged, reset, its emulator stopped): the first failed read or
    write closes the port and logs once; the bridge then tries to open the same path every
    REOPEN_SECONDS and relays again when it is back (a /dev/serial/by-id/... name follows the
    device to a new ttyACMn). Datagrams for a device that is away are dropped and counted. The
    UDP socket stays, so the aggregator sees the device at the same address when it returns.
    """

    def __init__(self, path: str, baudrate: int, counts: Counter):
        self.path = path
        self.baudrate = baudrate
        self.counts = counts
        self.serial = self._open()   # a missing port at start is an error (a typo), not a wait
        self.decoder = wire.StreamDecoder()
        self.udp = None
        self._retry = None
        self.proxy = None   # bridge_secagg.DeviceProxy under --secagg-proxy

    def _open(self):
        import serial  # pyserial: pip install 'fedtiny[serial]'
        return serial.Serial(self.path, baudrate=self.baudrate, timeout=0, write_timeout=1)

    async def start(self, server: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(lambda: _Uplink(self), remote_addr=server)
        loop.add_reader(self.serial.fileno(), self._readable)

    def _gone(self, exc: BaseException) -> None:
        """The device went away: close, log once, look for it again."""
        if self.serial is None:
            return
        loop = asyncio.get_running_loop()
        try:
            loop.remove_reader(self.serial.fileno())
        except (ValueError, OSError):
            pass
        try:
            self.serial.close()
        except OSError:
            pass
        self.serial = None
        self.counts["device_gone"] += 1
        log.warning("%s: the device went away (%s); relaying again when it returns", self.path, exc)
        self._retry = loop.call_later(REOPEN_SECONDS, self._reopen)

    def _reopen(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            port = self._open()
        except OSError as exc:   # SerialException is an OSError: not back yet
            log.debug("%s: %s", self.path, exc)
            self._retry = loop.call_later(REOPEN_SECONDS, self._reopen)
            return
        self._retry = None
        self.serial = port
        self.decoder = wire.StreamDecoder()   # a line cut by the disconnect is not completed by new bytes
        self.counts["device_back"] += 1
        log.info("%s: the device is back", self.path)
        loop.add_reader(self.serial.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.serial.read(4096)
        except OSError as exc:   # EIO on a hung-up tty; pyserial's "readiness to read but returned no data"
            self._gone(exc)
            return
        errors_before = sum(self.decoder.errors.values())
        for frame in self.decoder.feed(data):
            if len(frame) > wire.MAX_FRAME:
                self.counts["oversize"] += 1
                continue
            if self.proxy is not None:
                self.proxy.from_device(frame)
                continue
            self.udp.sendto(frame)
            self.counts["to_aggregator"] += 1
        if sum(self.decoder.errors.values()) != errors_before:
            for reason, n in self.decoder.errors.items():
                self.counts[f"serial_{reason}"] = n
            log.info("%s: serial frames dropped so far: %s", self.path, dict(self.decoder.errors))

    def send_up(self, frame: bytes) -> None:
        self.udp.sendto(frame)
        self.counts["to_aggregator"] += 1

    def to_device(self, frame: bytes) -> None:
        if len(frame) > wire.MAX_FRAME:
            self.counts["oversize"] += 1
            return
        if self.serial is None:
            self.counts["device_away"] += 1
            return
        try:
            self.serial.write(wire.cobs_frame(frame))
            self.counts["to_device"] += 1
        except OSError as exc:  # pyserial's SerialException and SerialTimeoutException are OSErrors
            from serial import SerialTimeoutException
            self.counts["serial_write_failed"] += 1
            if isinstance(exc, SerialTimeoutException):   # the device does not drain the line: it is there
                log.warning("%s: write failed: %s", self.path, exc)
            else:
                self._gone(exc)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self._retry is not None:
            self._retry.cancel()
        if self.serial is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.serial.fileno())
            except (RuntimeError, ValueError, OSError):
                pass
            self.serial.close()
        if self.udp is not None:
            self.udp.close()


async def relay(paths: list[str], server: tuple[str, int], *, baudrate: int = 115200,
                stop: asyncio.Event | None = None, counts: Counter | None = None,
                proxy_keys: dict[int, bytes] | None = None) -> Counter:
    """proxy_keys: the devices' keys under --secagg-proxy (None: relay frames unchanged)."""
    counts = Counter() if counts is None else counts
    stop = stop or asyncio.Event()
    ports = []
    try:
        for path in paths:
            port = SerialPort(path, baudrate, counts)
            ports.append(port)
            if proxy_keys is not None:   # before the port reads its first frame
                from . import bridge_secagg
                port.proxy = bridge_secagg.DeviceProxy(path, proxy_keys, counts, port.to_device, port.send_up)
                port.proxy.start()
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
    p.add_argument("--secagg-proxy", action="store_true",
                   help="run the SecAgg+ stage for each device (it keeps its plain protocol); the aggregator sees "
                        "only masked vectors, this host sees its devices' updates (docs/secagg.md); needs --keys")
    p.add_argument("--keys", metavar="FILE", help="with --secagg-proxy: the keys of the devices on these ports")
    p.add_argument("--verbose", "-v", action="store_true")


def run_command(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    server = parse_hostport(args.server, "--server")
    try:
        import serial  # noqa: F401
    except ImportError:
        raise ValueError("fedtiny bridge needs pyserial: pip install 'fedtiny[serial]'") from None
    proxy_keys = None
    if args.secagg_proxy != (args.keys is not None):
        raise ValueError("--secagg-proxy and --keys FILE go together: the proxy answers secure rounds with its "
                         "devices' keys; without both the bridge holds no keys")
    if args.secagg_proxy:
        from . import keys as keys_mod
        proxy_keys = keys_mod.load_keys(args.keys)

    async def main() -> Counter:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await relay(args.serial, server, baudrate=args.baud, stop=stop, proxy_keys=proxy_keys)

    try:
        counts = asyncio.run(main())
    except Exception as exc:
        if type(exc).__name__ == "SerialException":
            raise ValueError(str(exc)) from None
        raise
    print(f"bridge stopped: {dict(counts)}", file=sys.stderr)
    return 0
