"""The fleet uplink: how a Flower ClientApp asks a running `fedtiny fleet` for one round.

A Unix stream socket (mode 0600: only the operator's account connects), one exchange per
connection, both directions framed the same way (little-endian):
    magic b"FTUP" | version u8 (1) | type u8 | reserved u16 (0) | header_len u32 | payload_len u32
    header  header_len bytes of UTF-8 JSON (an object), at most MAX_HEADER
    payload payload_len bytes: n_params float32 (ROUND: the global model; PARTIAL: sum n_k delta_k)
Types: ROUND (ClientApp -> fleet; header: n_params, lr, epochs, batch, codec, flower_round),
PARTIAL (fleet -> ClientApp; header: total_weight, updates, fleet_round, train_loss),
ERROR (fleet -> ClientApp; header: error). No flwr and no aggregator here: both sides import it.
"""
from __future__ import annotations

import json
import socket
import struct
import time

import numpy as np

MAGIC = b"FTUP"
VERSION = 1
ROUND, PARTIAL, ERROR = 1, 2, 3
PREFIX = struct.Struct("<4sBBHII")
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 4 << 28      # 2^28 parameters, the engine's limit


def pack(msg_type: int, header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER:
        raise ValueError(f"uplink header of {len(head)} bytes, at most {MAX_HEADER}")
    return PREFIX.pack(MAGIC, VERSION, msg_type, 0, len(head), len(payload)) + head + payload


def parse_prefix(prefix: bytes) -> tuple[int, int, int]:
    """(type, header_len, payload_len) of a frame prefix, or ValueError naming what is wrong."""
    magic, version, msg_type, reserved, hlen, plen = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ValueError(f"not a fedtiny uplink frame (magic {magic!r})")
    if version != VERSION:
        raise ValueError(f"uplink version {version}, this fedtiny speaks {VERSION}")
    if msg_type not in (ROUND, PARTIAL, ERROR) or reserved:
        raise ValueError(f"uplink frame type {msg_type} (reserved {reserved}) is not known")
    if hlen > MAX_HEADER or plen > MAX_PAYLOAD or plen % 4:
        raise ValueError(f"uplink frame sizes out of range: header {hlen}, payload {plen} bytes")
    return msg_type, hlen, plen


def parse_header(data: bytes) -> dict:
    try:
        header = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"uplink header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("uplink header must be a JSON object")
    return header


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the fleet did not answer in time")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("the fleet closed the uplink before its answer was complete")
        buf += chunk
    return bytes(buf)


def request_round(path: str, global_params: np.ndarray, config: dict, timeout: float) -> tuple[dict, np.ndarray]:
    """Send the global model to the fleet at `path`, wait for its round: (header, partial sum).
    Raises ValueError with the fleet's reason when it answers ERROR, TimeoutError after timeout."""
    deadline = time.monotonic() + float(timeout)
    n = int(global_params.size)
    frame = pack(ROUND, {**config, "n_params": n}, np.ascontiguousarray(global_params, "<f4").tobytes())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ValueError(f"no fedtiny fleet listens on {path} ({exc.strerror}): start `fedtiny fleet "
                             f"--uplink {path} ...` on this machine") from None
        sock.sendall(frame)
        msg_type, hlen, plen = parse_prefix(_recv_exact(sock, PREFIX.size, deadline))
        header = parse_header(_recv_exact(sock, hlen, deadline))
        payload = _recv_exact(sock, plen, deadline)
    if msg_type == ERROR:
        raise ValueError(f"the fleet refused the round: {header.get('error', 'no reason given')}")
    if msg_type != PARTIAL or plen != 4 * n:
        raise ValueError(f"the fleet answered type {msg_type} with {plen} bytes; expected a partial sum of {n} values")
    return header, np.frombuffer(payload, dtype="<f4").astype(np.float32)
