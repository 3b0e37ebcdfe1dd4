"""The aggregator's status page (`--http HOST:PORT`): one self-contained HTML page, the JSON behind
it (/status.json) and Prometheus' text format (/metrics). Read-only and bounded.

Served by asyncio in the aggregator's own event loop (not http.server in a thread): every request
reads the aggregator's state between two of its callbacks, so a snapshot is never torn and needs
no lock, and the limits are plain asyncio ones: at most MAX_CONNECTIONS connections (more get 503
and are closed), a request head of at most MAX_REQUEST_BYTES read within REQUEST_SECONDS (431 /
408), the answer written within WRITE_SECONDS (else the connection is dropped), GET only (405),
three fixed paths and nothing read from disk (404 for any other, `..` included), one request per
connection. Bound to a loopback address it also checks the Host header (a web page that re-points
its own name at 127.0.0.1 cannot read it). What is shown is what metrics.csv holds plus the device
table: no key, no session secret, no model weights. docs/network.md "Status page".
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections import Counter
from typing import Callable

from .. import __version__, codec
from .common import parse_hostport

log = logging.getLogger("fedtiny.status")

MAX_CONNECTIONS = 8          # open at once; more are answered 503 and closed
MAX_REQUEST_BYTES = 8192     # request line and headers
REQUEST_SECONDS = 5.0        # to send them (a client sending a byte a second is cut off)
WRITE_SECONDS = 5.0          # to take the answer (a client that does not read is dropped)
LINGER_SECONDS = 1.0         # after the answer, what the client still sends is read and dropped for this long,
LINGER_BYTES = 65536         # up to this much: closing on unread bytes would reset the connection, answer lost
MAX_ROWS = 1000              # rounds in /status.json (the page's curves): the last ones
PATHS = ("/", "/status.json", "/metrics")
PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "status_page.html")
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


def check_address(text: str, public: bool = False, option: str = "--http") -> tuple[str, int]:
    """HOST:PORT for the status page; a host that is not loopback only with --http-public."""
    host, port = parse_hostport(text, option)
    host = host.strip("[]")
    if not (public or is_loopback(host)):
        raise ValueError(f"{option} {text}: {host} is not a loopback address, so anyone who can reach this machine "
                         f"could read the status page; use 127.0.0.1:{port}, or add --http-public to serve it there")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:      # any other name may resolve anywhere
        return False


# --- what is shown ------------------------------------------------------------------------------

def _finite(v):
    """JSON has no NaN: a figure not measured is null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


ROW_SKIP = ("down_by_type", "stragglers")   # per-round details the page does not draw


def _epsilon(rows: list[dict]):
    """ε spent so far: the last metrics row that carries a field named like it (DP runs only)."""
    for row in reversed(rows):
        for k, v in row.items():
            if "epsilon" in k and isinstance(v, (int, float)):
                return k, v
    return None, None


def aggregator_snapshot(agg, now: float | None = None) -> dict:
    """What the page shows, read from a live fedtiny.net.aggregator.Aggregator (in its loop)."""
    now = time.monotonic() if now is None else now
    cfg = agg.cfg
    rows = agg.metrics[-MAX_ROWS:]
    run = agg.current
    current = None
    if run is not None and getattr(run, "ingest", None) is not None:
        current = {"round": run.id, "selected": len(run.selected), "complete": run.ingest.n_complete,
                   "needed": run.rnd.min_updates, "elapsed_s": now - run.started,
                   "closes_in_s": max(0.0, run.rnd.deadline - now)}
    alive = set(agg._alive(now))
    update_bytes = codec.wire_size(agg.server.n_params)
    devices = []
    for dev in sorted(agg.devices.values(), key=lambda d: d.id):
        if not math.isfinite(dev.last_seen):
            continue        # a key that sent nothing authentic yet
        devices.append({"id": dev.id, "alive": dev.id in alive, "excluded": dev.excluded or None,
                        "last_seen_s": now - dev.last_seen, "samples": dev.n_samples,
                        "rounds_done": dev.rounds_done, "bytes_down": dev.bytes_down,
                        "update_bytes": dev.rounds_done * update_bytes,
                        "last_rejection": dev.last_rejection or None,
                        "last_rejection_s": now - dev.rejected_at if dev.last_rejection else None})
    eps_key, eps = _epsilon(rows)
    open_round = agg.server.current is not None and not agg.server.current.closed
    done = agg.server.round_id - open_round      # the open round already has its number
    in_round = (run.bytes_up, run.bytes_down) if run is not None else (0, 0)
    return _finite({
        "version": __version__, "model": cfg.model, "n_params": agg.server.n_params,
        "rounds_planned": cfg.rounds, "rounds_done": done, "resumed_from": agg.resumed_from,
        "finished": agg.finished, "uptime_s": now - agg.started, "current": current,
        "devices": devices, "devices_known": len(agg.keys),
        "rejected": dict(sorted(agg.rejected.items())), "clipped": agg.clipped,
        "bytes_up": sum(r["bytes_up"] for r in agg.metrics) + in_round[0],
        "bytes_down": sum(r["bytes_down"] for r in agg.metrics) + in_round[1],
        "epsilon": eps, "epsilon_field": eps_key,
        "rounds": [{k: v for k, v in r.items() if k not in ROW_SKIP} for r in rows],
    })


def _label(v) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v) -> str:
    if v is None:
        return "NaN"
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def prometheus_text(snap: dict, responses: Counter | None = None) -> str:
    """The snapshot in Prometheus' text exposition format 0.0.4 (counters end in _total)."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str, samples) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")

    last = snap["rounds"][-1] if snap["rounds"] else {}
    cur = snap["current"] or {}
    family("fedtiny_rounds_planned", "gauge", "Rounds this run is asked to finish (--rounds).",
           [({}, snap["rounds_planned"])])
    family("fedtiny_rounds_finished", "gauge", "Rounds finished and saved in the state directory.",
           [({}, snap["rounds_done"])])
    family("fedtiny_round_open", "gauge", "The round now open (0: none).", [({}, cur.get("round", 0))])
    family("fedtiny_round_updates_complete", "gauge", "Complete updates staged in the open round.",
           [({}, cur.get("complete", 0))])
    family("fedtiny_round_updates_needed", "gauge", "Updates that close the open round.", [({}, cur.get("needed", 0))])
    family("fedtiny_devices_seen", "gauge", "Devices that sent an authentic frame in this process life.",
           [({}, len(snap["devices"]))])
    family("fedtiny_devices_alive", "gauge", "Devices heard from recently enough to be sampled.",
           [({}, sum(d["alive"] for d in snap["devices"]))])
    family("fedtiny_frames_rejected_total", "counter", "Frames and updates dropped, by reason (since this process started).",
           [({"reason": k}, v) for k, v in snap["rejected"].items()])
    family("fedtiny_updates_clipped_total", "counter", "Updates scaled down to --clip-norm (accepted).",
           [({}, snap["clipped"])])
    family("fedtiny_received_bytes_total", "counter", "UDP bytes received in the rounds of this process life.",
           [({}, snap["bytes_up"])])
    family("fedtiny_sent_bytes_total", "counter", "UDP bytes sent in the rounds of this process life.",
           [({}, snap["bytes_down"])])
    family("fedtiny_test_accuracy", "gauge", "Test accuracy of the global model after the last round.",
           [({}, last.get("test_acc"))])
    family("fedtiny_test_loss", "gauge", "Test loss of the global model after the last round.", [({}, last.get("test_loss"))])
    family("fedtiny_train_loss", "gauge", "Devices' mean training loss in the last round (weighted by n_k).",
           [({}, last.get("train_loss"))])
    if snap["epsilon"] is not None:
        family("fedtiny_dp_epsilon", "gauge", f"Differential privacy: epsilon spent ({snap['epsilon_field']}).",
               [({}, snap["epsilon"])])
    family("fedtiny_device_updates_accepted_total", "counter", "Updates of the device accepted into a round.",
           [({"device": d["id"]}, d["rounds_done"]) for d in snap["devices"]])
    family("fedtiny_device_sent_bytes_total", "counter", "UDP bytes sent to the device.",
           [({"device": d["id"]}, d["bytes_down"]) for d in snap["devices"]])
    family("fedtiny_device_last_seen_seconds", "gauge", "Seconds since the device's last authentic frame.",
           [({"device": d["id"]}, d["last_seen_s"]) for d in snap["devices"]])
    if responses is not None:
        family("fedtiny_status_responses_total", "counter", "Answers of this status server, by HTTP status code.",
               [({"code": c}, n) for c, n in sorted(responses.items())])
    return "\n".join(out) + "\n"


# --- the page -----------------------------------------------------------------------------------

def _csp(page: str) -> str:
    """Only the page's own inline script and style run; it may fetch from its own origin only."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
            f"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _load_page() -> tuple[bytes, str]:
    with open(PAGE_FILE, encoding="utf-8") as f:
        page = f.read()
    return page.encode(), _csp(page)


# --- the server ---------------------------------------------------------------------------------

class HttpError(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


class StatusServer:
    """The HTTP server; snapshot() is called in the event loop for every /status.json and /metrics."""

    def __init__(self, snapshot: Callable[[], dict], host: str, port: int, *, public: bool = False,
                 max_connections: int = MAX_CONNECTIONS):
        self.snapshot = snapshot
        self.host, self.port, self.public = host, port, public
        self.max_connections = max_connections
        self.responses: Counter[int] = Counter()
        self.active = 0
        self.address: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._page, self._csp = _load_page()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES)
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("status page on %s", self.url)
        return self.address

    @property
    def url(self) -> str:
        host = f"[{self.address[0]}]" if ":" in self.address[0] else self.address[0]
        return f"http://{host}:{self.address[1]}/"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def _allowed_hosts(self) -> set[str]:
        port = self.address[1]
        return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", self.host)}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self.responses[503] += 1
            writer.write(self._head(503, "text/plain; charset=utf-8", 0, extra="Retry-After: 1\r\n"))
            await self._linger(reader, writer)
            return
        self.active += 1
        self._writers.add(writer)
        try:
            try:
                code, ctype, body = self._answer(await self._read_head(reader))
            except HttpError as exc:
                code, ctype, body = exc.code, "text/plain; charset=utf-8", f"{exc}\n".encode()
            except (asyncio.IncompleteReadError, OSError):
                return        # the client went away before its request was complete
            self.responses[code] += 1
            extra = "Allow: GET\r\n" if code == 405 else ""
            writer.write(self._head(code, ctype, len(body), extra=extra) + body)
            try:
                await asyncio.wait_for(writer.drain(), WRITE_SECONDS)
            except (asyncio.TimeoutError, OSError):
                writer.transport.abort()
                return
            await self._linger(reader, writer)
        finally:
            self.active -= 1
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then read and drop what the client still sends (a request body, the rest of
        an oversized head) until it closes, for at most LINGER_SECONDS / LINGER_BYTES."""
        try:
            if writer.can_write_eof():
                writer.write_eof()
            end, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
            while left > 0 and (wait := end - time.monotonic()) > 0:
                data = await asyncio.wait_for(reader.read(min(left, 16384)), wait)
                if not data:
                    break
                left -= len(data)
        except (asyncio.TimeoutError, OSError, asyncio.LimitOverrunError, ValueError):
            pass     # the client went away, or sent too much: it is closed either way
        finally:
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> list[str]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_SECONDS)
        except asyncio.TimeoutError:
            raise HttpError(408, f"request head not complete within {REQUEST_SECONDS:g} s") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request head longer than {MAX_REQUEST_BYTES} bytes") from None
        return head.decode("latin-1").split("\r\n")[:-2]

    def _answer(self, lines: list[str]) -> tuple[int, str, bytes]:
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "not an HTTP/1.x request line")
        method, target, _ = parts
        if method != "GET":
            raise HttpError(405, f"{method[:16]} is not served: this page is read-only (GET)")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if not self.public and headers.get("host", "").lower() not in self._allowed_hosts():
            raise HttpError(403, "the Host header must name this loopback address")
        path = target.split("?", 1)[0]
        if path not in PATHS:
            raise HttpError(404, "not found: the paths are /, /status.json and /metrics")
        if path == "/":
            return 200, "text/html; charset=utf-8", self._page
        try:
            snap = self.snapshot()
        except Exception:     # a bug here must not stop the aggregator: 500, and the traceback in the log
            log.exception("status snapshot failed")
            raise HttpError(500, "the snapshot failed: see the aggregator's log") from None
        if path == "/status.json":
            return 200, "application/json", json.dumps(snap, allow_nan=False, separators=(",", ":")).encode()
        return 200, "text/plain; version=0.0.4; charset=utf-8", prometheus_text(snap, self.responses).encode()

    def _head(self, code: int, ctype: str, length: int, extra: str = "") -> bytes:
        csp = f"Content-Security-Policy: {self._csp}\r\n" if ctype.startswith("text/html") else ""
        return (f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
                f"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
                f"{csp}{extra}Connection: close\r\n\r\n").encode("latin-1")


async def start(address: str, snapshot: Callable[[], dict], *, public: bool = False) -> StatusServer:
    host, port = check_address(address, public)
    server = StatusServer(snapshot, host, port, public=public)
    await server.start()
    return server
