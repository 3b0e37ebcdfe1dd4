"""A fleet on loopback: one `fedtiny aggregate` process and N real `fedtiny client` processes of
the 2nn on Fashion-MNIST shards (tests/test_fleet.py; also runnable to measure by hand):

    python tests/fleet.py --clients 100 --rounds 3        # prints one line per round

Each client's .npz is its part of the Fashion-MNIST training set, split as simulate splits it
(fedtiny.net.demo.write_client_data). The figures come from the aggregator's own metrics
(state.json): devices per round and the bytes it sent (bytes_down) and received (bytes_up).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

MODEL = "2nn"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs, timeout: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_fleet(directory: str, clients: int, rounds: int, *, round_timeout: float = 120.0,
              budget_s: float = 600.0, extra_args: tuple = (), keep_logs: bool = False, client_nice: int = 10) -> dict:
    """Run the fleet to the end; returns {"metrics": [...], "model_bytes": int, "returncode": int,
    "wall_s": float, "aggregator_log": str}."""
    from fedtiny import model as model_mod
    from fedtiny.net import keys, state
    from fedtiny.net.demo import write_client_data

    keyfile = os.path.join(directory, "keys")
    with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(keys.generate(range(clients)))
    paths = write_client_data(directory, "fashion-mnist", clients, seed=0)
    state_dir = os.path.join(directory, "state")
    log_path = os.path.join(directory, "aggregator.log")
    port = _free_port()
    server = f"127.0.0.1:{port}"
    cli = [sys.executable, "-m", "fedtiny.cli"]
    t0 = time.monotonic()
    with open(log_path, "w") as agg_log:
        agg = subprocess.Popen(cli + ["aggregate", "--listen", server, "--model", MODEL, "--rounds", str(rounds),
                                      "--min-clients", str(clients), "--round-timeout", str(round_timeout),
                                      "--keys", keyfile, "--state", state_dir, "--dataset", "fashion-mnist",
                                      "--lr", "0.05", "--batch", "20", *extra_args],
                               env=ENV, cwd=directory, stdout=agg_log, stderr=subprocess.STDOUT)
        # Devices run on their own hardware: here the 100 client processes share 2 cores with
        # the aggregator, so they run at nice 10 and the aggregator is not starved by them.
        procs = [subprocess.Popen(["nice", "-n", str(client_nice)] + cli + ["client", "--server", server, "--device-id", str(k), "--key", keyfile,
                                         "--data", paths[k], "--model", MODEL],
                                  env=ENV, cwd=directory, stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(directory, f"client{k}.log"), "w") if keep_logs else subprocess.DEVNULL)
                 for k in range(clients)]
        try:
            agg.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            agg.terminate()
            agg.wait(timeout=10)
        finally:
            _stop(procs)
    ckpt = state.load(state_dir)
    with open(log_path) as f:
        text = f.read()
    return {"metrics": ckpt.metrics if ckpt else [], "model_bytes": 4 * model_mod.build(MODEL).n_params,
            "returncode": agg.returncode, "wall_s": time.monotonic() - t0, "aggregator_log": text}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--budget", type=float, default=900.0, help="seconds before the run is stopped")
    args, extra = p.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="fedtiny-fleet-") as tmp:
        out = run_fleet(tmp, args.clients, args.rounds, round_timeout=args.round_timeout, budget_s=args.budget,
                        extra_args=tuple(extra))
    want = out["model_bytes"] * args.clients
    print(f"{args.clients} clients, model {out['model_bytes']:,} B, aggregator exit {out['returncode']}, "
          f"wall {out['wall_s']:.1f} s")
    for r in out["metrics"]:
        print(f"round {r['round']}: {r['clients']}/{r['selected']} devices, {r['round_s']:.1f} s "
              f"(aggregator CPU {r.get('cpu_s', float('nan')):.1f} s), "
              f"sent {r['bytes_down'] / 1e6:.1f} MB = {r['bytes_down'] / want:.2f} x float32 model x devices, "
              f"model chunks resent {r.get('model_chunks_resent')} restarts {r.get('model_restarts')}, received {r['bytes_up'] / 1e6:.1f} MB ({r['bytes_up'] / r['clients']:,.0f} B per device), test acc {r['test_acc']:.4f}, rejected {r['rejected']}, sent by type {r.get('down_by_type')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
