"""Bytes per parameter on the wire and the aggregator's CPU per round, with and without --secagg,
over the network: the real `fedtiny aggregate` and N real `fedtiny client` processes on 127.0.0.1
(the 2nn on Fashion-MNIST, IID, every device in every round, 1 epoch, batch 10, lr 0.05).

    python bench/secagg_network.py [--clients 10] [--rounds 5] [--model 2nn] [--dataset fashion-mnist]

Runs int8 (`--codec int8-stochastic`) and SecAgg+ (`--secagg --clip-norm 2`) one after the other
with the same devices and seed, and prints a Markdown table from each run's metrics.json:
bytes_up per contributing device and parameter (every upstream datagram: frames, headers, tags,
HELLOs, ACKs, keys and shares), bytes_down likewise, and the aggregator process's CPU seconds per
round (`cpu_s`: time.process_time over the round, the aggregator only: clients are other
processes). Round 1 is left out of the medians (imports and first-touch memory).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

from fedtiny import model as model_mod
from fedtiny.net import keys
from fedtiny.net.demo import client_command, write_client_data

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp: str, name: str, extra: list[str], args, paths: list[str], keyfile: str) -> list[dict]:
    state = os.path.join(tmp, f"state-{name}")
    port = free_port()
    agg = subprocess.Popen([sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}",
                            "--model", args.model, "--dataset", args.dataset, "--rounds", str(args.rounds),
                            "--min-clients", str(args.clients), "--keys", keyfile, "--state", state,
                            "--lr", "0.05", "--batch", "10", "--round-timeout", "120", *extra],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    clients = [subprocess.Popen(client_command(f"127.0.0.1:{port}", k, keyfile, p, args.model), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k, p in enumerate(paths)]
    try:
        rc = agg.wait(timeout=60 * args.rounds + 120)
        if rc != 0:
            raise SystemExit(f"{name}: fedtiny aggregate exited with {rc}: {agg.stderr.read()[-2000:]}")
    finally:
        for c in clients:
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
    with open(os.path.join(state, "metrics.json")) as f:
        return json.load(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="2nn")
    ap.add_argument("--dataset", default="fashion-mnist")
    args = ap.parse_args()
    n_params = model_mod.build(args.model).n_params
    with tempfile.TemporaryDirectory(prefix="fedtiny-secagg-bench-") as tmp:
        keyfile = os.path.join(tmp, "keys")
        keys.write_keys(keyfile, keys.generate(range(args.clients)))
        paths = write_client_data(tmp, args.dataset, args.clients)
        runs = {"int8 (--codec int8-stochastic)": run(tmp, "int8", ["--codec", "int8-stochastic"], args, paths, keyfile),
                "SecAgg+ b = 16 (--secagg --clip-norm 2)": run(tmp, "secagg", ["--secagg", "--clip-norm", "2"], args,
                                                                 paths, keyfile)}
    print(f"{args.model} ({n_params:,} parameters), {args.clients} devices per round, {args.rounds} rounds; "
          f"medians of rounds 2..{args.rounds}\n")
    print("| run | bytes up per device and parameter | bytes down per device and parameter | "
          "aggregator CPU ms per round | test accuracy after the last round |")
    print("|---|---:|---:|---:|---:|")
    cpu = {}
    for name, rows in runs.items():
        later = rows[1:] or rows
        up = statistics.median(r["bytes_up"] / (r["clients"] * n_params) for r in later)
        down = statistics.median(r["bytes_down"] / (r["selected"] * n_params) for r in later)
        cpu[name] = statistics.median(r["cpu_s"] for r in later) * 1e3
        print(f"| {name} | {up:.3f} | {down:.3f} | {cpu[name]:.1f} | {rows[-1]['test_acc']:.4f} |")
        if os.environ.get("BENCH_DEBUG"):
            for r in rows:
                print(r["round"], r["bytes_up"], r.get("rejected"), r.get("secagg_resent"), r.get("secagg_stages"),
                      r["round_s"], file=sys.stderr)
    a, b = cpu.values()
    print(f"\naggregator CPU per round, SecAgg+ / int8: {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
