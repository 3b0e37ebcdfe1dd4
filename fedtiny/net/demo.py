"""`fedtiny demo`: a real federation on this machine, round by round.

An aggregator (in this process) and N client processes on 127.0.0.1 talk the real protocol
over UDP; each client trains on its own part of the bundled 8x8 digits (the same partition
`fedtiny simulate --dataset digits` makes), so the run matches a simulation with the same seeds.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from .. import datasets
from . import keys
from .aggregator import AggregateConfig, Aggregator, add_http_arguments
from .common import setup_logging

HELP = "run an aggregator and N client processes on 127.0.0.1 and show the federated rounds"


def write_client_data(directory: str, dataset: str, clients: int, *, partition: str = "iid",
                      seed: int = 0, data_dir: str | None = None) -> list[str]:
    """One .npz per client with its training part, split exactly as simulate splits it."""
    data = datasets.load(dataset, data_dir, seed=seed)
    splits = datasets.partition(data.y_train, clients, partition, seed=seed)
    paths = []
    for k, part in enumerate(splits):
        path = os.path.join(directory, f"client{k}.npz")
        np.savez(path, x=data.x_train[part.train], y=data.y_train[part.train])
        paths.append(path)
    return paths


def client_command(server: str, device_id: int, keyfile: str, data: str, model: str) -> list[str]:
    return [sys.executable, "-m", "fedtiny.cli", "client", "--server", server, "--device-id", str(device_id),
            "--key", keyfile, "--data", data, "--model", model]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=3, help="client processes (default %(default)s)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--model", default="mlp:64-32-10")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--partition", default="iid", choices=datasets.PARTITIONS)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--codec", default="int8-stochastic", choices=("int8", "int8-stochastic", "int8-ef"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-timeout", type=float, default=20.0)
    p.add_argument("--port", type=int, default=0, help="UDP port (default: any free one)")
    p.add_argument("--state", default=None, metavar="DIR", help="keep the checkpoint and metrics here")
    p.add_argument("--mode", default="sync", choices=("sync", "async"),
                   help="async: FedBuff, a server step every --buffer updates (--rounds counts steps)")
    p.add_argument("--buffer", type=int, default=None, metavar="K", help="async: updates per server step (default 2)")
    p.add_argument("--concurrency", type=int, default=None, metavar="M",
                   help="async: devices training at once (default: --clients)")
    p.add_argument("--max-staleness", type=int, default=None, metavar="S", help="async: default 20")
    p.add_argument("--secagg", action="store_true",
                   help="secure aggregation (SecAgg+, docs/secagg.md): the aggregator sees only the round's sum")
    add_http_arguments(p)
    p.add_argument("--verbose", "-v", action="store_true", help="log the aggregator's and clients' messages")


def run_command(args: argparse.Namespace) -> int:
    if args.clients < 1:
        raise ValueError(f"--clients must be >= 1, got {args.clients}")
    setup_logging(args.verbose)
    if not args.verbose:
        import logging
        logging.getLogger("fedtiny").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fedtiny-demo-") as tmp:
        state_dir = args.state or os.path.join(tmp, "state")
        keyfile = os.path.join(tmp, "keys")
        keys.write_keys(keyfile, keys.generate(range(args.clients)))
        paths = write_client_data(tmp, args.dataset, args.clients, partition=args.partition, seed=args.seed,
                                  data_dir=args.data_dir)
        cfg = AggregateConfig(listen=f"127.0.0.1:{args.port}", model=args.model, rounds=args.rounds,
                              min_clients=args.clients, round_timeout=args.round_timeout, keys=keyfile,
                              state=state_dir, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                              batch=args.batch, lr=args.lr, codec=args.codec, seed=args.seed,
                              http=args.http, http_public=args.http_public, secagg=args.secagg, mode=args.mode,
                              **({} if args.mode == "sync" else
                                 {"buffer": 2 if args.buffer is None else args.buffer,
                                  "concurrency": args.clients if args.concurrency is None else args.concurrency,
                                  "max_staleness": args.max_staleness}),
                              **({} if args.mode == "async" else
                                 {k: v for k in ("buffer", "concurrency", "max_staleness")
                                  if (v := getattr(args, k)) is not None}))
        agg = Aggregator(cfg)
        print(f"fedtiny demo: {args.clients} client processes, {args.model} ({agg.server.n_params:,} parameters) on "
              f"{args.dataset}, {args.rounds} {'rounds' if args.mode == 'sync' else 'asynchronous server steps (FedBuff)'}, "
              f"{'SecAgg+ masked updates' if args.secagg else 'int8 updates'} over UDP on 127.0.0.1")
        procs: list[subprocess.Popen] = []
        quiet = None if args.verbose else subprocess.DEVNULL

        def start_clients(address) -> None:
            if agg.status_server is not None:
                print(f"status page: {agg.status_server.url}", flush=True)
            server = f"{address[0]}:{address[1]}"
            for k, path in enumerate(paths):
                procs.append(subprocess.Popen(client_command(server, k, keyfile, path, args.model),
                                              stdout=quiet, stderr=quiet, cwd=tmp))

        t0 = time.perf_counter()
        try:
            done = asyncio.run(agg.serve(ready=start_clients))
        finally:
            for p in procs:
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.terminate()
                    p.wait(timeout=3)
        last = agg.metrics[-1] if agg.metrics else {}
        print(f"{done} {'rounds' if args.mode == 'sync' else 'server steps'} in {time.perf_counter() - t0:.1f} s; final test accuracy {last.get('test_acc', float('nan')):.4f}; "
              f"uploaded {sum(r['bytes_up'] for r in agg.metrics) / 1e3:.1f} KB, "
              f"downloaded {sum(r['bytes_down'] for r in agg.metrics) / 1e3:.1f} KB")
        if args.state:
            print(f"checkpoint and metrics.csv in {args.state}")
    return 0 if done >= args.rounds else 1
