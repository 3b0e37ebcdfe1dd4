"""The differential-privacy utility table of docs/privacy.md: Fashion-MNIST, `2nn`, 1,000 iid
clients, 100 per round (Poisson, q = 0.1), clip 0.5, delta = 1e-5, 30 rounds; accuracy against
epsilon for central (3 seeds) and distributed DP (1 seed), z calibrated up front for the planned
rounds (--target-epsilon).

    python bench/dp_utility.py run OUT_DIR [--rounds R] [--only NAME-PREFIX ...]   # runs what is missing
    python bench/dp_utility.py table OUT_DIR [--rounds R]                          # markdown table

--rounds R (default 30) runs every mode at R rounds (z calibrated for R rounds), distributed with
all three seeds: the shorter table that distributed DP's cost on the dev VM allows.

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
SEEDS = (0, 1, 2)
DISTRIBUTED_SEEDS = (0,)  # about 25 s per round on the dev VM: one seed is what the time allowed at 30 rounds
EPSILONS = (1, 2, 4, 8)


def runs(rounds: int = ROUNDS) -> dict[str, str]:
    """name -> `fedtiny simulate` arguments. At R != 30 rounds distributed runs every seed, and
    central and distributed come first (the cheap none/clip rows last)."""
    base = (f"--model 2nn --dataset fashion-mnist --clients 1000 --fraction 0.1 --epochs 1 --batch 10 --lr 0.05 "
            f"--partition iid --rounds {rounds} --eval-every 5 --delta 1e-5")
    dist_seeds = DISTRIBUTED_SEEDS if rounds == ROUNDS else SEEDS
    out: dict[str, str] = {}
    for seed in SEEDS:
        for eps in (4, 1, 8, 2) if seed in dist_seeds else ():  # every device samples 262,144 discrete Gaussians
            out[f"distributed-eps{eps}-s{seed}"] = (f"{base} --seed {seed} --dp distributed --clip-norm 0.5 "
                                                    f"--target-epsilon {eps}")
        for eps in EPSILONS:
            out[f"central-eps{eps}-s{seed}"] = f"{base} --seed {seed} --dp central --clip-norm 0.5 --target-epsilon {eps}"
    for seed in SEEDS:
        out[f"none-s{seed}"] = f"{base} --seed {seed}"
        out[f"clip-inf-s{seed}"] = f"{base} --seed {seed} --clip-norm 0.5"
    return out


RUNS = runs()


def run(out: str, only: list[str], rounds: int = ROUNDS) -> None:
    for name, args in runs(rounds).items():
        if only and not any(name.startswith(p) for p in only):
            continue
        dest = os.path.join(out, name)
        if os.path.exists(os.path.join(dest, "result.json")):
            continue
        cmd = [sys.executable, "-m", "fedtiny.cli", "simulate", *shlex.split(args), "--quiet", "--out", dest]
        print("$ fedtiny simulate " + args + f" --out {dest}", flush=True)
        subprocess.run(cmd, check=True)


def table(out: str, rounds: int = ROUNDS) -> None:
    """One row per mode: final test accuracy per seed (seed in brackets) and their mean."""
    rows: dict[str, list[tuple[str, dict]]] = {}
    order = sorted(runs(rounds), key=lambda n: (n.split("-")[0] not in ("none", "clip"), n))
    for name in order:
        path = os.path.join(out, name, "result.json")
        if os.path.exists(path):
            mode, seed = name.rsplit("-s", 1)
            with open(path) as f:
                rows.setdefault(mode, []).append((seed, json.load(f)["summary"]))
    print("| mode | epsilon (delta 1e-5) | z | b | final test acc per seed | mean |")
    print("|---|---|---|---|---|---|")
    for mode, done in rows.items():
        s = done[0][1]
        eps = f"{s['epsilon']:.3f}" if "epsilon" in s else "inf"
        z = f"{s['noise_multiplier']:.3f}" if "noise_multiplier" in s else "-"
        accs = [r["final_test_acc"] for _, r in done]
        print(f"| {mode} | {eps} | {z} | {s.get('dp_bits', '-')} | "
              f"{', '.join(f'{a:.4f} (s{seed})' for (seed, _), a in zip(done, accs))} | {sum(accs) / len(accs):.4f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "table"):
        sys.exit(__doc__)
    argv = sys.argv[3:]
    r = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else ROUNDS
    if "--rounds" in argv:
        del argv[argv.index("--rounds"):argv.index("--rounds") + 2]
    if sys.argv[1] == "run":
        run(sys.argv[2], argv[argv.index("--only") + 1:] if "--only" in argv else [], r)
    else:
        table(sys.argv[2], r)
