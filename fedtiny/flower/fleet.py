"""`fedtiny fleet`: a fedtiny aggregator whose rounds come from a Flower federation.

The fleet is the aggregator of `fedtiny aggregate` (its UDP devices, its bridges, sessions,
staging, checkpoints), unchanged but for two things: a round starts when the fleet's Flower
ClientApp hands over the federation's global model through the uplink (uplink.py, a Unix
socket), and at the close the sum sum_k n_k delta_k with its weight sum_k n_k goes back up the
uplink before any server step: the SuperLink's strategy takes the step for the whole federation
(hierarchical FedAvg). Devices stay joined between Flower rounds; they see ordinary rounds.
No flwr here: the ClientApp (clientapp.py) runs in Flower's process and talks to this one.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import stat

import numpy as np

from .. import rounds
from ..net import aggregator as agg_mod
from ..net.common import setup_logging
from . import uplink

log = logging.getLogger("fedtiny.fleet")

FOREVER = 2**31 - 1      # --rounds default: serve Flower rounds until stopped


class UpstreamServer(rounds.Server):
    """rounds.Server whose step is taken upstream: closing a round first keeps the sum."""

    partial: tuple[np.ndarray, float, int] | None = None

    @classmethod
    def adopt(cls, server: rounds.Server) -> "UpstreamServer":
        """The same server (model, accumulator, optimizer, limits) with this close_round."""
        up = cls.__new__(cls)
        up.__dict__.update(server.__dict__)
        return up

    def close_round(self, now: float | None = None) -> rounds.RoundResult:
        rnd = self.current
        n_updates = rnd.n_complete if rnd is not None else 0
        taken = self.accumulator.partial_sum() if n_updates else None
        result = super().close_round(now)  # the fleet's own step: harmless, the next round starts from upstream
        self.partial = None
        if taken is not None and result.outcome == "applied":
            self.partial = (taken[0], taken[1], n_updates)
        return result


class FleetAggregator(agg_mod.Aggregator):
    """An Aggregator that waits for the uplink before each round and answers it at the close."""

    def __init__(self, cfg: agg_mod.AggregateConfig, uplink_path: str, *, out=None):
        super().__init__(cfg, out=out)
        if cfg.server_opt != "fedavg" or cfg.server_lr not in (None, 1.0):
            raise ValueError("a fleet takes no server step of its own: the Flower strategy does; drop --server-opt/--server-lr")
        self.server = UpstreamServer.adopt(self.server)
        self.uplink_path = uplink_path
        self._requests: asyncio.Queue = asyncio.Queue()
        self.served = 0

    # -- the uplink --------------------------------------------------------------------------
    async def _on_uplink(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            try:
                msg_type, hlen, plen = uplink.parse_prefix(await reader.readexactly(uplink.PREFIX.size))
                header = uplink.parse_header(await reader.readexactly(hlen))
                payload = await reader.readexactly(plen)
                params = self._check_request(msg_type, header, payload)
            except ValueError as exc:
                log.warning("uplink request refused: %s", exc)
                writer.write(uplink.pack(uplink.ERROR, {"error": str(exc)}))
                await writer.drain()
                return
            await self._requests.put((header, params, answer))
            writer.write(await answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            log.warning("uplink connection lost: %s", exc)
        finally:
            if not answer.done():
                answer.cancel()
            writer.close()

    def _check_request(self, msg_type: int, header: dict, payload: bytes) -> np.ndarray:
        if msg_type != uplink.ROUND:
            raise ValueError(f"expected a ROUND request, got type {msg_type}")
        n = self.server.n_params
        if header.get("n_params") != n or len(payload) != 4 * n:
            raise ValueError(f"the global model has {header.get('n_params')} parameters ({len(payload)} bytes), "
                             f"this fleet runs --model {self.cfg.model} with {n}")
        params = np.frombuffer(payload, dtype="<f4").astype(np.float32)
        if not np.isfinite(params).all():
            raise ValueError("the global model holds NaN or Inf")
        for key, lo in (("lr", 0.0), ("epochs", 1), ("batch", 1)):
            v = header.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < lo or (key == "lr" and v == 0) or (key != "lr" and v != int(v))):
                raise ValueError(f"{key} {v!r} is out of range")
        codec = header.get("codec")
        same = [c for c, (up, _) in agg_mod.CODECS.items() if up == self.up_codec]   # the run's upload format
        if codec is not None and codec not in same:
            raise ValueError(f"codec {codec!r}: use one of {', '.join(same)}")
        return params

    # -- rounds ------------------------------------------------------------------------------
    async def _run_round(self, stop: asyncio.Event) -> bool:
        get = asyncio.ensure_future(self._requests.get())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not get.done():
            get.cancel()
            return False
        header, params, answer = get.result()
        if answer.done():            # the requester went away while queued
            return True
        np.copyto(self.server.params, params)
        self.cfg.lr = float(header.get("lr", self.cfg.lr))
        self.cfg.epochs = int(header.get("epochs", self.cfg.epochs))
        self.cfg.batch = int(header.get("batch", self.cfg.batch))
        self.cfg.codec = header.get("codec", self.cfg.codec)
        log.info("uplink: Flower round %s, global model received", header.get("flower_round", "?"))
        ok = await super()._run_round(stop)
        partial = self.server.partial if ok else None
        self.server.partial = None
        if partial is None:
            frame = uplink.pack(uplink.ERROR, {"error": "the fleet's round closed without a complete update"
                                               if ok else "the fleet is stopping"})
        else:
            total, weight, updates = partial
            row = self.metrics[-1] if self.metrics else {}
            loss = row.get("train_loss", math.nan)
            frame = uplink.pack(uplink.PARTIAL, {"total_weight": weight, "updates": updates,
                                                 "fleet_round": self.server.round_id,
                                                 "train_loss": loss if math.isfinite(loss) else None},
                                total.astype("<f4").tobytes())
            self.served += 1
        if not answer.done():
            answer.set_result(frame)
        return ok

    async def serve(self, stop: asyncio.Event | None = None, ready=None) -> int:
        path = self.uplink_path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ValueError(f"--uplink {path}: directory {parent} does not exist: create it or choose another path")
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise ValueError(f"--uplink {path} exists and is not a socket: choose another path")
            os.unlink(path)          # a socket left by an earlier life
        old = os.umask(0o177)        # the socket is the operator's alone (mode 0600)
        try:
            server = await asyncio.start_unix_server(self._on_uplink, path=path)
        finally:
            os.umask(old)
        log.info("fleet uplink on %s", path)
        try:
            return await super().serve(stop, ready)
        finally:
            server.close()
            if os.path.exists(path):
                os.unlink(path)


# --- command line ---------------------------------------------------------------------------

HELP = "run a fedtiny fleet as one node of a Flower federation (its aggregator, rounds from Flower)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    agg_mod.add_arguments(p)
    p.add_argument("--uplink", required=True, metavar="PATH",
                   help="Unix socket for the fleet's Flower ClientApp (node config fleet-uplink)")
    p.set_defaults(rounds=FOREVER, dataset="none")


def run_command(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    cfg = agg_mod.config_from_args(args)
    fleet = FleetAggregator(cfg, args.uplink)

    async def main() -> int:
        return await fleet.serve(asyncio.Event())
    asyncio.run(main())
    print(f"fleet: {fleet.served} Flower round(s) served; state in {os.path.abspath(cfg.state)}")
    return 0
