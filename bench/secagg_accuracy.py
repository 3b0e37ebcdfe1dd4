"""Issue 11's accuracy check: Fashion-MNIST, 2nn, 100 clients, C = 0.1, 50 rounds; SecAgg+ on the
shared 16-bit grid against the int8 codec without SecAgg, three seeds each (docs/secagg.md).

    python bench/secagg_accuracy.py run OUT_DIR      # runs what is missing (each command printed)
    python bench/secagg_accuracy.py table OUT_DIR    # the markdown table

Each run is one `fedtiny simulate` command writing OUT_DIR/<name>/result.json.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np

BASE = ("--dataset fashion-mnist --model 2nn --clients 100 --fraction 0.1 --epochs 1 --batch 10 --lr 0.05 "
        "--partition iid --rounds 50")
MODES = {
    "int8": "--codec int8",
    "secagg16": "--secagg --secagg-bits 16 --clip-norm 2.0",
    "secagg16-dropout0.2": "--secagg --secagg-bits 16 --clip-norm 2.0 --dropout 0.2 --dropout-phase any",
}
SEEDS = (0, 1, 2)
RUNS = {f"{mode}-seed{s}": f"{BASE} {extra} --seed {s}" for mode, extra in MODES.items() for s in SEEDS}


def run(out: str) -> None:
    for name, args in RUNS.items():
        dest = os.path.join(out, name)
        if os.path.exists(os.path.join(dest, "result.json")):
            continue
        cmd = [sys.executable, "-m", "fedtiny.cli", "simulate", *shlex.split(args), "--quiet", "--out", dest]
        print("fedtiny simulate " + args + f" --out {dest}", flush=True)
        subprocess.run(cmd, check=True)


def table(out: str) -> str:
    lines = ["| run | seed 0 | seed 1 | seed 2 | mean final (round 50) | mean of rounds 41-50 | abandoned rounds "
             "| bytes up per contributing device-round | process CPU s per run (training, protocol, evaluation) |",
             "|---|---|---|---|---|---|---|---|---|"]
    means = {}
    for mode in MODES:
        finals, tails, abandoned, up, cpu = [], [], 0, [], []
        for s in SEEDS:
            with open(os.path.join(out, f"{mode}-seed{s}", "result.json")) as f:
                res = json.load(f)
            accs = [r["test_acc"] for r in res["rounds"]]
            finals.append(100 * accs[-1])
            tails.append(100 * float(np.mean(accs[-10:])))
            abandoned += sum(r.get("secagg_outcome") == "abandoned" for r in res["rounds"])
            up.append(sum(r["upload_bytes"] for r in res["rounds"]) / max(1, sum(r["clients"] for r in res["rounds"])))
            cpu.append(res["summary"]["cpu_s"])
        means[mode] = (float(np.mean(finals)), float(np.mean(tails)))
        lines.append(f"| {mode} | " + " | ".join(f"{a:.2f}" for a in finals)
                     + f" | {means[mode][0]:.2f} | {means[mode][1]:.2f} | {abandoned} | {np.mean(up):,.0f} "
                     f"| {np.mean(cpu):.1f} |")
    for mode in MODES:
        if mode != "int8":
            lines.append(f"\n{mode} - int8: {means[mode][0] - means['int8'][0]:+.2f} points at round 50, "
                         f"{means[mode][1] - means['int8'][1]:+.2f} over rounds 41-50 (mean of {len(SEEDS)} seeds)")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("run", "table"):
        sys.exit(__doc__)
    if sys.argv[1] == "run":
        run(sys.argv[2])
    else:
        print(table(sys.argv[2]))
