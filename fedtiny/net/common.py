"""What the network programs (aggregator, client, bridge, demo) share: addresses, logging, protocol pacing."""
from __future__ import annotations

import logging
import sys

MODEL_WINDOW = 64         # model chunks sent per ACK from a device


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    text = text.removeprefix("udp://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not HOST:PORT")
    return host, int(port)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
