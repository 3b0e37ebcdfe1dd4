"""The simulation measurements of docs/simulation.md: runs `fedtiny simulate` for each setting and
prints the tables.

    python bench/simulation_runs.py run OUT_DIR [--only NAME-PREFIX ...]   # runs what is missing
    python bench/simulation_runs.py table OUT_DIR                          # markdown tables

Each run writes OUT_DIR/<name>/{rounds.csv,result.json,accuracy.png}; a finished run is skipped,
so the script can be stopped and restarted. Every command is printed before it runs.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np

MCMAHAN = "--dataset fashion-mnist --clients 100 --fraction 0.1 --epochs 1 --batch 10 --lr 0.05 --seed 0"

RUNS: dict[str, str] = {}
for part in ("iid", "shards"):
    for codec in ("float32", "int8", "int8-stochastic", "int8-ef"):
        RUNS[f"2nn-{part}-{codec}"] = f"--model 2nn {MCMAHAN} --partition {part} --codec {codec} --rounds 100"
for part in ("iid", "shards"):  # quantized local SGD: int8 weights on the device, int8 updates
    RUNS[f"2nn-{part}-int8-weights-int8"] = f"--model 2nn {MCMAHAN} --partition {part} --codec int8 --weights int8 --rounds 100"
for codec in ("float32", "int8"):  # the pathological split converges slowly: how many rounds to 85%?
    RUNS[f"2nn-shards-{codec}-r300"] = f"--model 2nn {MCMAHAN} --partition shards --codec {codec} --rounds 300 --eval-every 5"
for codec in ("float32", "int8"):
    RUNS[f"cnn-iid-{codec}"] = f"--model cnn {MCMAHAN} --partition iid --codec {codec} --rounds 50"
for codec in ("float32", "int8"):
    RUNS[f"cnn-iid-{codec}-r100"] = f"--model cnn {MCMAHAN} --partition iid --codec {codec} --rounds 100"
NONIID = {
    "fedavg": "",
    "fedprox": "--prox-mu 0.01",
    "fedavgm": "--server-opt fedavgm --server-lr 1.0 --server-momentum 0.9",
    "fedadam": "--server-opt fedadam --server-lr 0.01 --beta1 0.9 --beta2 0.99 --tau 0.001",
    "fedprox-mu0.1": "--prox-mu 0.1",
    "fedavgm-lr0.1": "--server-opt fedavgm --server-lr 0.1 --server-momentum 0.9",
    "fedadam-lr0.003": "--server-opt fedadam --server-lr 0.003 --beta1 0.9 --beta2 0.99 --tau 0.001",
}
for part in ("shards", "dirichlet"):
    for name, extra in NONIID.items():
        RUNS[f"noniid-{part}-{name}"] = (f"--model 2nn {MCMAHAN} --partition {part} --alpha 0.5 --codec int8 "
                                         f"--rounds 100 {extra}").strip()
for norm in ("none", "fednova"):
    RUNS[f"hetero-dirichlet-{norm}"] = (f"--model 2nn {MCMAHAN} --partition dirichlet --alpha 0.5 --codec int8 "
                                        f"--rounds 100 --epochs 2 --hetero --normalize {norm}")
RUNS["personalize-dirichlet0.1"] = (f"--model 2nn {MCMAHAN} --partition dirichlet --alpha 0.1 --codec int8 "
                                   f"--rounds 50 --personalize 1 --personalize-clients 100")
for seed in (1, 2):  # seed spread of the float32 / int8 gap
    for part in ("iid", "shards"):
        for codec in ("float32", "int8"):
            RUNS[f"2nn-{part}-{codec}-seed{seed}"] = (f"--model 2nn {MCMAHAN.replace('--seed 0', f'--seed {seed}')} "
                                                      f"--partition {part} --codec {codec} --rounds 100")
RUNS["k1000-dirichlet-int8"] = ("--model 2nn --dataset fashion-mnist --clients 1000 --fraction 0.05 --epochs 1 "
                                "--batch 10 --lr 0.05 --partition dirichlet --alpha 0.5 --codec int8 --rounds 100 --seed 0")
for k in (10, 100, 1000):
    RUNS[f"memory-{k}"] = (f"--model 2nn --dataset fashion-mnist --clients {k} --fraction 1.0 --epochs 1 --batch 10 "
                           f"--lr 0.05 --codec int8 --rounds 2 --trace-memory --test-limit 1000 --seed 0")


def run(out: str, only: list[str]) -> None:
    for name, args in RUNS.items():
        if only and not any(name.startswith(p) for p in only):
            continue
        target = os.path.join(out, name)
        if os.path.exists(os.path.join(target, "result.json")):
            continue
        cmd = ["fedtiny", "simulate", *shlex.split(args), "--quiet", "--out", target]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def _load(out: str, name: str) -> dict | None:
    path = os.path.join(out, name, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _acc_at(res: dict, r: int) -> str:
    rows = [row for row in res["rounds"] if row["round"] == r]
    return f"{rows[0]['test_acc'] * 100:.2f}" if rows else "-"


def _first(res: dict, target: float) -> str:
    hit = next((row["round"] for row in res["rounds"] if row["test_acc"] >= target), None)
    return str(hit) if hit is not None else "not in run"


def _last10(res: dict) -> float:
    return float(np.nanmean([row["test_acc"] for row in res["rounds"][-10:]]))


def table(out: str) -> None:
    print("| run | rounds | acc@10 | acc@25 | acc@50 | final acc | mean last 10 | best | rounds to 85% | upload MB total | bytes/update | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in RUNS:
        res = _load(out, name)
        if res is None or name.startswith("memory"):
            continue
        s = res["summary"]
        print(f"| {name} | {len(res['rounds'])} | {_acc_at(res, 10)} | {_acc_at(res, 25)} | {_acc_at(res, 50)} | "
              f"{s['final_test_acc'] * 100:.2f} | {_last10(res) * 100:.2f} | {s['best_test_acc'] * 100:.2f} | {_first(res, 0.85)} | "
              f"{s['upload_mb']:.1f} | {s['upload_bytes_per_update']:.0f} | {s['wall_s']:.0f} |")
    print()
    curves = ["2nn-iid-float32", "2nn-iid-int8", "2nn-shards-float32", "2nn-shards-int8", "cnn-iid-float32", "cnn-iid-int8"]
    loaded = {name: _load(out, name) for name in curves}
    print("| round | " + " | ".join(curves) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for r in (1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100):
        print(f"| {r} | " + " | ".join(_acc_at(loaded[c], r) if loaded[c] else "-" for c in curves) + " |")
    print()
    print("| partition | seed | float32 final | int8 final | gap (points) | float32 mean last 10 | int8 mean last 10 | gap (points) | upload bytes float32 / int8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for part in ("iid", "shards"):
        gaps = []
        for seed in (0, 1, 2):
            suffix = "" if seed == 0 else f"-seed{seed}"
            f, q = _load(out, f"2nn-{part}-float32{suffix}"), _load(out, f"2nn-{part}-int8{suffix}")
            if f is None or q is None:
                continue
            fs, qs = f["summary"], q["summary"]
            gap = (fs["final_test_acc"] - qs["final_test_acc"]) * 100
            gap10 = (_last10(f) - _last10(q)) * 100
            gaps.append((gap, gap10))
            print(f"| {part} | {seed} | {fs['final_test_acc'] * 100:.2f} | {qs['final_test_acc'] * 100:.2f} | {gap:+.2f} | "
                  f"{_last10(f) * 100:.2f} | {_last10(q) * 100:.2f} | {gap10:+.2f} | "
                  f"{fs['upload_bytes_per_update'] / qs['upload_bytes_per_update']:.2f}x |")
        if gaps:
            g = np.mean(gaps, axis=0)
            print(f"| {part} | mean | | | {g[0]:+.2f} | | | {g[1]:+.2f} | |")
    print()
    print("| clients per round | aggregator traced bytes (max) | aggregator state bytes | client-side residuals |")
    print("|---|---|---|---|")
    for k in (10, 100, 1000):
        res = _load(out, f"memory-{k}")
        if res is not None:
            s = res["summary"]
            print(f"| {k} | {s['aggregator_traced_bytes_max']:,} | {s['aggregator_state_bytes']:,} | "
                  f"{s['client_residual_bytes']:,} |")
    res = _load(out, "personalize-dirichlet0.1")
    if res is not None and res.get("personalization"):
        p = res["personalization"]
        print()
        print("| per-client accuracy | mean | p10 | median | p90 |")
        print("|---|---|---|---|---|")
        for when in ("before", "after"):
            q = p[f"{when}_summary"]
            print(f"| {when} fine-tuning | {q['mean'] * 100:.1f} | {q['p10'] * 100:.1f} | {q['median'] * 100:.1f} | "
                  f"{q['p90'] * 100:.1f} |")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("run", "table"):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    if argv[0] == "run":
        only = argv[argv.index("--only") + 1:] if "--only" in argv else []
        run(argv[1], only)
    else:
        table(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
