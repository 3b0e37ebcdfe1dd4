"""The differential-privacy utility table of docs/privacy.md: Fashion-MNIST, `2nn`, 1,000 iid
clients, 100 per round (Poisson, q = 0.1), clip 0.5, delta = 1e-5; accuracy against epsilon for
central and distributed DP, z calibrated up front for the planned rounds (--target-epsilon).

    python bench/dp_utility.py run OUT_DIR [--only NAME-PREFIX ...]   # runs what is missing
    python bench/dp_utility.py table OUT_DIR                          # markdown table

Each run writes OUT_DIR/<name>/{rounds.csv,result.json}; a finished run is skipped, so the
script can be stopped and restarted. Every command is printed before it runs.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

ROUNDS = 30
SEEDS = (0,)
BASE = (f"--model 2nn --dataset fashion-mnist --clients 1000 --fraction 0.1 --epochs 1 --batch 10 --lr 0.05 "
        f"--partition iid --rounds {ROUNDS} --eval-every 5 --delta 1e-5")
EPSILONS = (1, 2, 4, 8)

RUNS: dict[str, str] = {}
for seed in SEEDS:
    RUNS[f"none-s{seed}"] = f"{BASE} --seed {seed}"
    RUNS[f"clip-inf-s{seed}"] = f"{BASE} --seed {seed} --clip-norm 0.5"
    for eps in EPSILONS:
        RUNS[f"central-eps{eps}-s{seed}"] = f"{BASE} --seed {seed} --dp central --clip-norm 0.5 --target-epsilon {eps}"
    for eps in (4, 1, 8, 2):  # slowest: every device samples 262,144 discrete Gaussians per round
        RUNS[f"distributed-eps{eps}-s{seed}"] = (f"{BASE} --seed {seed} --dp distributed --clip-norm 0.5 "
                                                 f"--target-epsilon {eps}")


def run(out: str, only: list[str]) -> None:
    for name, args in RUNS.items():
        if only and not any(name.startswith(p) for p in only):
            continue
        dest = os.path.join(out, name)
        if os.path.exists(os.path.join(dest, "result.json")):
            continue
        cmd = [sys.executable, "-m", "fedtiny.cli", "simulate", *shlex.split(args), "--quiet", "--out", dest]
        print("$ fedtiny simulate " + args + f" --out {dest}", flush=True)
        subprocess.run(cmd, check=True)


def table(out: str) -> None:
    print("| mode | epsilon (delta 1e-5) | z | final test acc | best | bits | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name in RUNS:
        path = os.path.join(out, name, "result.json")
        if not os.path.exists(path):
            continue
        s = json.load(open(path))["summary"]
        mode = name.rsplit("-s", 1)[0]
        eps = f"{s['epsilon']:.3f}" if "epsilon" in s else "inf"
        z = f"{s['noise_multiplier']:.3f}" if "noise_multiplier" in s else "-"
        print(f"| {mode} | {eps} | {z} | {s['final_test_acc']:.4f} | {s['best_test_acc']:.4f} | "
              f"{s.get('dp_bits', '-')} | {s['wall_s']:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "table"):
        sys.exit(__doc__)
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[sys.argv.index("--only") + 1:] if "--only" in sys.argv else [])
    else:
        table(sys.argv[2])
