"""The communication table of docs/simulation.md ("Communication both ways"): Fashion-MNIST 2nn,
100 clients, C = 0.1, 100 rounds, IID and shards, for each upload codec and download codec.

    python bench/comm_table.py run OUT_DIR [--seeds 0 1 2] [--only NAME-PREFIX ...]  # runs what is missing
    python bench/comm_table.py table OUT_DIR                                       # markdown table

Each run writes OUT_DIR/<name>/{rounds.csv,result.json}; a finished run is skipped, so the script
can be stopped and restarted (it is meant to run in the background: 40 runs of ~1 min per seed).
Bytes per round are the rounds.csv columns divided by the clients of the round: what one device
sends and receives. Every command is printed before it runs.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import numpy as np
from simulation_runs import _load  # the same result.json reader

BASE = ("--model 2nn --dataset fashion-mnist --clients 100 --fraction 0.1 --epochs 1 --batch 10 --lr 0.05 "
        "--rounds 100 --eval-every 10")
UPLOADS = ("float32", "int8", "int4-ef", "int2-ef", "1bit-rot-ef")
DOWNLOADS = ("float32", "int8")
PARTS = ("iid", "shards")
N_PARAMS = 199_210  # the 2nn's parameters


def runs(seeds: list[int]) -> dict[str, str]:
    out = {}
    for seed in seeds:  # seed-major: a stopped run still has whole seeds
        for part in PARTS:
            for down in DOWNLOADS:
                for up in UPLOADS:
                    out[f"{part}-up-{up}-down-{down}-seed{seed}"] = (
                        f"{BASE} --partition {part} --codec {up} --down-codec {down} --seed {seed} --quiet")
    return out


def run(out: str, seeds: list[int], only: list[str]) -> None:
    for name, args in runs(seeds).items():
        if only and not any(name.startswith(p) for p in only):
            continue
        target = os.path.join(out, name)
        if os.path.exists(os.path.join(target, "result.json")):
            continue
        cmd = [os.path.join(os.path.dirname(sys.executable), "fedtiny"), "simulate", *shlex.split(args), "--out", target]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def table(out: str) -> None:
    print("| partition | upload | download | seeds | down B/param | up B/param | down B/round/device | "
          "up B/round/device | final acc % (mean ± sd) | vs float32/float32 (points) | device copy acc % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for part in PARTS:
        base = {}
        for down in DOWNLOADS:
            for up in UPLOADS:
                res = [r for s in range(10) if (r := _load(out, f"{part}-up-{up}-down-{down}-seed{s}")) is not None]
                if not res:
                    continue
                seeds = sorted(r["config"]["seed"] for r in res)
                acc = np.array([r["summary"]["final_test_acc"] * 100 for r in res])
                rows = [row for r in res for row in r["rounds"] if row["clients"]]
                down_b = np.mean([row["download_bytes"] / row["clients"] for row in rows])
                up_b = np.mean([row["upload_bytes"] / row["clients"] for row in rows])
                if up == "float32" and down == "float32":
                    base = {r["config"]["seed"]: r["summary"]["final_test_acc"] * 100 for r in res}
                gap = [a - base[s] for s, a in zip(seeds, acc) if s in base]
                dev = [r["summary"].get("final_device_test_acc") for r in res]
                dev_s = f"{np.mean(dev) * 100:.2f}" if all(d is not None for d in dev) else "-"
                print(f"| {part} | {up} | {down} | {','.join(map(str, seeds))} | {down_b / N_PARAMS:.3f} | "
                      f"{up_b / N_PARAMS:.3f} | {down_b:,.0f} | {up_b:,.0f} | {acc.mean():.2f} ± {acc.std():.2f} | "
                      f"{np.mean(gap):+.2f} | {dev_s} |" if gap else
                      f"| {part} | {up} | {down} | {','.join(map(str, seeds))} | {down_b / N_PARAMS:.3f} | "
                      f"{up_b / N_PARAMS:.3f} | {down_b:,.0f} | {up_b:,.0f} | {acc.mean():.2f} ± {acc.std():.2f} | - | {dev_s} |")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("run", "table"):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    if argv[0] == "run":
        seeds = [int(s) for s in argv[argv.index("--seeds") + 1:] if s.isdigit()] if "--seeds" in argv else [0, 1, 2]
        if "--only" in argv:
            only = argv[argv.index("--only") + 1:]
            seeds = [int(s) for s in argv[argv.index("--seeds") + 1: argv.index("--only")]] if "--seeds" in argv else seeds
        else:
            only = []
        run(argv[1], seeds, only)
    else:
        table(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
