"""Synchronous FedAvg against FedBuff on one simulated clock (docs/simulation.md, "Devices that come
and go"): Fashion-MNIST, 2nn, 100 devices, speeds log-uniform over a 10x spread, on/off availability.

    python bench/async_runs.py run OUT_DIR [--jobs N] [--only NAME-PREFIX ...]   # runs what is missing
    python bench/async_runs.py table OUT_DIR                                    # markdown tables
    python bench/async_runs.py plot OUT_DIR PNG [SYNC ASYNC]                    # accuracy against simulated time
    python bench/async_runs.py labels [SEED]                                    # the skew fleet: labels by speed

Each run writes OUT_DIR/<name>/{rounds.csv,result.json}; a finished run is skipped, so the script
can be stopped and restarted. Every command is printed before it runs.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TARGET = 0.85
SEEDS = (0, 1, 2)
FLEET = ("--dataset fashion-mnist --model 2nn --clients 100 --epochs 1 --batch 10 --lr 0.05 --partition iid "
         "--codec float32 --speed-min 1 --speed-spread 10 --availability markov --on-mean 600 --off-mean 300")
SYNC = ([("0.1", d) for d in ("7", "8", "10", "15", "20", "30", "none")]
        + [("0.3", d) for d in ("8", "10", "20", "30")] + [("0.5", "10")])  # C, deadline s
ASYNC = {  # name -> (K, M, extra)
    "k10-m20": (10, 20, ""),
    "k10-m50": (10, 50, ""),
    "k10-m100": (10, 100, ""),
    "k10-m50-const": (10, 50, "--staleness const"),
    "k10-m50-slr2": (10, 50, "--server-lr 2"),
    "k10-m50-a1": (10, 50, "--staleness-exponent 1"),
    "k5-m50": (5, 50, ""),
    "k5-m100": (5, 100, ""),
    "k20-m100": (20, 100, ""),
    # issue 15, second pass (docs/simulation.md "Second pass"): a finer K x M grid around the best,
    # the other staleness functions, a tighter --max-staleness, client lr 0.1 (tried for sync too)
    "k5-m30": (5, 30, ""),
    "k5-m40": (5, 40, ""),
    "k5-m60": (5, 60, ""),
    "k5-m70": (5, 70, ""),
    "k3-m30": (3, 30, ""),
    "k3-m40": (3, 40, ""),
    "k3-m50": (3, 50, ""),
    "k2-m30": (2, 30, ""),
    "k2-m40": (2, 40, ""),
    "k5-m50-hinge": (5, 50, "--staleness hinge"),
    "k5-m50-const": (5, 50, "--staleness const"),
    "k5-m50-ms10": (5, 50, "--max-staleness 10"),
    "k5-m50-lr0.1": (5, 50, "--lr 0.1"),
    "k5-m70-lr0.1": (5, 70, "--lr 0.1"),
    "k5-m50-fedavgm": (5, 50, "--server-opt fedavgm --server-lr 0.3 --server-momentum 0.7"),
    # third pass: a task not uploaded 60 s after it began is dropped and its slot freed (the slowest
    # device's task is 54 s of on-time, so only a device that went off mid-task loses its task)
    "k5-m50-t60": (5, 50, "--task-timeout 60"),
    "k3-m40-t60": (3, 40, "--task-timeout 60"),
    "k5-m60-t60": (5, 60, "--task-timeout 60"),
}

RUNS: dict[str, str] = {}
SYNC_SLR2 = [("0.1", "10"), ("0.3", "10")]  # the same with --server-lr 2, as the asynchronous runs try it
for (c, d), slr in [(x, 1) for x in SYNC] + [(x, 2) for x in SYNC_SLR2]:  # none: wait for the slowest device
    for seed in SEEDS:
        dl = "" if d == "none" else f"--deadline {d} "
        lr, tag = ("", "") if slr == 1 else (f" --server-lr {slr}", f"-slr{slr}")
        RUNS[f"sync-c{c}-d{d}{tag}-s{seed}"] = (f"{FLEET} --seed {seed} --mode sync --fraction {c} {dl}"
                                                f"--rounds 100 --eval-every 2{lr}")
SYNC_MORE = {  # second pass: name -> (C, deadline s, extra)
    "sync-c0.3-d6": ("0.3", "6", ""), "sync-c0.3-d7": ("0.3", "7", ""), "sync-c0.3-d9": ("0.3", "9", ""),
    "sync-c0.2-d8": ("0.2", "8", ""), "sync-c0.5-d7": ("0.5", "7", ""), "sync-c0.5-d8": ("0.5", "8", ""),
    "sync-c1.0-d7": ("1.0", "7", ""), "sync-c1.0-d8": ("1.0", "8", ""),
    "sync-c0.3-d8-lr0.1": ("0.3", "8", "--lr 0.1"), "sync-c0.5-d7-lr0.1": ("0.5", "7", "--lr 0.1"),
    "sync-c0.3-d8-fedavgm": ("0.3", "8", "--server-opt fedavgm --server-lr 0.3 --server-momentum 0.7"),
}
for name, (c, d, extra) in SYNC_MORE.items():
    for seed in SEEDS:
        RUNS[f"{name}-s{seed}"] = (f"{FLEET} --seed {seed} --mode sync --fraction {c} --deadline {d} "
                                   f"--rounds 100 --eval-every 2 {extra}".strip())
for name, (k, m, extra) in ASYNC.items():
    for seed in SEEDS:
        RUNS[f"async-{name}-s{seed}"] = (f"{FLEET} --seed {seed} --mode async --buffer {k} --concurrency {m} "
                                         f"--max-staleness 20 {extra}".strip() + f" --rounds {(2400 if m >= 100 else 1200) // k} --eval-every 2")

# Other fleets (issue 15, second pass), each with its own synchronous deadline search: the name's
# prefix before "_" names the fleet, and the table compares FedBuff with the best synchronous
# setting of the same fleet only. e2: two local epochs (tasks of 108 steps: 10.8 to 108 s);
# av60: on/off periods of 60 s / 30 s on average (still on 2/3 of the time); sp20: speeds over a
# 20x spread (1 to 20 steps/s).
VARIANTS = {
    "e2": ("--epochs 2", [("0.3", "12"), ("0.3", "14"), ("0.3", "16"), ("0.3", "20"), ("1.0", "12"), ("1.0", "13"),
                          ("1.0", "14"), ("1.0", "15"), ("1.0", "16"), ("0.5", "14"), ("1.0", "18"), ("1.0", "20")],
           {"k5-m50": (5, 50, ""), "k10-m50": (10, 50, ""), "k5-m70": (5, 70, "")}),
    "av60": ("--on-mean 60 --off-mean 30", [("0.3", "8"), ("0.3", "10"), ("0.5", "8"), ("1.0", "8"), ("1.0", "10")],
             {"k5-m50": (5, 50, ""), "k10-m50": (10, 50, "")}),
    "sp20": ("--speed-spread 20", [("0.3", "4"), ("0.3", "5"), ("0.3", "6"), ("1.0", "4"), ("1.0", "5"), ("1.0", "6"),
                                   ("1.0", "7"), ("1.0", "8")],
             {"k5-m50": (5, 50, ""), "k5-m100": (5, 100, ""), "k10-m100": (10, 100, "")}),
    # skew (third pass): data that differs between slow and fast devices. Half of each device's data
    # is dealt IID, the other half is McMahan's two label shards; speeds (the same 10x log-uniform
    # draws) are handed out in the order of each device's dominant label (--speed-by label): the
    # slowest devices mostly see T-shirts (label 0), the fastest mostly ankle boots (9).
    "skew": ("--partition shards --iid-share 0.5 --speed-by label",
             [("0.3", "8"), ("0.3", "10"), ("0.3", "12"), ("0.5", "8"), ("0.5", "9"), ("0.5", "10"), ("0.5", "11"),
              ("0.5", "12"), ("0.7", "10"), ("1.0", "6"), ("1.0", "7"), ("1.0", "8"),
              ("1.0", "9"), ("1.0", "10"), ("1.0", "11"), ("1.0", "12"), ("1.0", "14"), ("1.0", "16"), ("1.0", "20"),
              ("1.0", "27")],
             {"k5-m50": (5, 50, ""), "k10-m50": (10, 50, ""), "k3-m40": (3, 40, ""),
              "k5-m40": (5, 40, ""), "k5-m60": (5, 60, ""), "k4-m50": (4, 50, ""), "k10-m100": (10, 100, ""),
              "k5-m50-t60": (5, 50, "--task-timeout 60"), "k5-m60-t60": (5, 60, "--task-timeout 60"),
              "k10-m50-t60": (10, 50, "--task-timeout 60"), "k10-m80": (10, 80, ""), "k8-m100": (8, 100, ""),
              "k15-m100": (15, 100, ""), "k20-m100": (20, 100, "")}),
}
for vname, (vflags, vsync, vasync) in VARIANTS.items():
    for seed in SEEDS:
        for c, d in vsync:
            RUNS[f"{vname}_sync-c{c}-d{d}-s{seed}"] = (f"{FLEET} {vflags} --seed {seed} --mode sync --fraction {c} "
                                                       f"--deadline {d} --rounds {200 if vname == 'skew' else 100} "
                                                       "--eval-every 2")
        for name, (k, m, extra) in vasync.items():
            RUNS[f"{vname}_async-{name}-s{seed}"] = (
                f"{FLEET} {vflags} --seed {seed} --mode async --buffer {k} --concurrency {m} --max-staleness 20 "
                f"{extra}".strip() + f" --rounds {(2400 if m >= 100 or vname == 'skew' else 1200) // k} --eval-every 2")


def _cmd(name: str, out: str) -> list[str]:
    return ["fedtiny", "simulate", *shlex.split(RUNS[name]), "--quiet", "--out", os.path.join(out, name)]


def run(out: str, only: list[str], jobs: int) -> None:
    todo = [n for n in RUNS if (not only or any(n.startswith(p) for p in only))
            and not os.path.exists(os.path.join(out, n, "result.json"))]

    def one(name: str) -> None:
        cmd = _cmd(name, out)
        print("$", shlex.join(cmd), flush=True)
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"FAILED: {name}", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))


def _load(out: str, name: str) -> dict | None:
    path = os.path.join(out, name, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _time_to(res: dict, target: float = TARGET) -> float:
    hit = next((r for r in res["rounds"] if r["test_acc"] is not None and r["test_acc"] >= target), None)
    return math.inf if hit is None else float(hit["sim_time_s"])


def _settings() -> list[str]:
    return sorted({n.rsplit("-s", 1)[0] for n in RUNS}, key=list(dict.fromkeys(n.rsplit("-s", 1)[0] for n in RUNS)).index)


def _fmt(t: float) -> str:
    return "not reached" if math.isinf(t) else f"{t:,.0f}"


def table(out: str) -> None:
    print(f"| setting | seed 0 | seed 1 | seed 2 | mean | server steps to {TARGET:.0%} (seed 0) | updates per step (mean) | "
          "best acc (seed 0) | final simulated s |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = {}
    for setting in _settings():
        runs = [_load(out, f"{setting}-s{s}") for s in SEEDS]
        if not any(runs):
            continue
        times = [_time_to(r) if r else math.nan for r in runs]
        mean = float(np.mean(times)) if all(r for r in runs) else math.nan
        r0 = runs[0]
        if r0 is None:  # seed 0 not run (yet): its columns are empty
            print(f"| {setting} | - | " + " | ".join("-" if math.isnan(t) else _fmt(t) for t in times[1:]) +
                  " | - | - | - | - | - |")
            continue
        steps = next((r["round"] for r in r0["rounds"] if r["test_acc"] is not None and r["test_acc"] >= TARGET),
                     None) if r0 else None
        per = np.mean([r["clients"] for r in r0["rounds"]]) if r0 else math.nan
        print(f"| {setting} | " + " | ".join("-" if math.isnan(t) else _fmt(t) for t in times) +
              f" | {'-' if math.isnan(mean) else _fmt(mean)} | {steps if steps else '-'} | {per:.1f} | "
              f"{r0['summary']['best_test_acc'] * 100:.2f} | {r0['summary']['sim_time_s']:,.0f} |")
        if not math.isnan(mean):
            best[setting] = times
    seed0 = {k: _time_to(r) for k in _settings() if (r := _load(out, f"{k}-s0")) is not None}
    for fleet in dict.fromkeys(_fleet(k) for k in seed0):
        s0 = {k: t for k, t in seed0.items() if _fleet(k) == fleet and _mode(k) == "sync"}
        a0 = {k: t for k, t in seed0.items() if _fleet(k) == fleet and _mode(k) == "async"}
        if s0 and a0:  # the screening: seed 0 of every setting
            s_name = min(s0, key=s0.get)
            print()
            print(f"Fleet {fleet or 'base'}, seed 0: best synchronous setting {s_name} ({_fmt(s0[s_name])} s); "
                  "sync / async: " + ", ".join(f"{k} {s0[s_name] / t:.2f}x" if math.isfinite(t) else f"{k} not reached"
                                               for k, t in a0.items()))
        syncs = {k: v for k, v in best.items() if _fleet(k) == fleet and _mode(k) == "sync"}
        asyncs = {k: v for k, v in best.items() if _fleet(k) == fleet and _mode(k) == "async"}
        if not (syncs and asyncs):
            continue
        s_name = min(syncs, key=lambda k: np.mean(syncs[k]))
        print()
        print(f"Fleet {fleet or 'base'}: best synchronous setting (mean over seeds): {s_name}. Speed-up of each "
              f"asynchronous setting (time to {TARGET:.0%}, per seed, sync / async):")
        print()
        print("| async setting | seed 0 | seed 1 | seed 2 | mean of per-seed ratios |")
        print("|---|---|---|---|---|")
        for a_name, at in asyncs.items():
            ratios = [s / a for s, a in zip(syncs[s_name], at)]  # 0: FedBuff did not reach the target
            cells = [f"{x:.2f}x" if x > 0 else "not reached" for x in ratios]
            mean = f"{np.mean(ratios):.2f}x" if all(x > 0 for x in ratios) else "-"
            print(f"| {a_name} | " + " | ".join(cells) + f" | {mean} |")
        # stricter: each seed against the synchronous setting that was fastest on that seed (an
        # oracle that knows each seed's best deadline), among the settings run on every seed
        per_seed = [min(v[i] for v in syncs.values()) for i in range(len(SEEDS))]
        names = [min(syncs, key=lambda k: syncs[k][i]) for i in range(len(SEEDS))]
        print()
        print(f"Fleet {fleet or 'base'}, each seed against its own fastest synchronous setting ("
              + ", ".join(f"seed {s}: {n} {_fmt(t)} s" for s, n, t in zip(SEEDS, names, per_seed)) + "):")
        print()
        print("| async setting | seed 0 | seed 1 | seed 2 | mean of per-seed ratios |")
        print("|---|---|---|---|---|")
        for a_name, at in asyncs.items():
            ratios = [s / a for s, a in zip(per_seed, at)]
            cells = [f"{x:.2f}x" if x > 0 else "not reached" for x in ratios]
            mean = f"{np.mean(ratios):.2f}x" if all(x > 0 for x in ratios) else "-"
            print(f"| {a_name} | " + " | ".join(cells) + f" | {mean} |")


def _fleet(setting: str) -> str:
    return setting.partition("_")[0] if "_" in setting else ""


def _mode(setting: str) -> str:
    return setting.rpartition("_")[2].split("-")[0]


def plot(out: str, png: str, sync_name: str | None = None, async_name: str = "async-k5-m50") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if sync_name is None:
        cands = {s: [_load(out, f"{s}-s{x}") for x in SEEDS] for s in _settings()
                 if _mode(s) == "sync" and _fleet(s) == _fleet(async_name)}
        cands = {s: r for s, r in cands.items() if all(r)}
        sync_name = min(cands, key=lambda s: np.mean([_time_to(r) for r in cands[s]]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    reach = [0.0]
    for name, colour in ((sync_name, "tab:blue"), (async_name, "tab:orange")):
        for i, seed in enumerate(SEEDS):
            res = _load(out, f"{name}-s{seed}")
            if res is None:
                continue
            rows = [r for r in res["rounds"] if r["test_acc"] is not None]
            ax.plot([r["sim_time_s"] for r in rows], [r["test_acc"] for r in rows], color=colour, alpha=0.8,
                    lw=1.2, label=name if i == 0 else None)
            reach.append(_time_to(res))
    scale = {"": (("sync-c0.1-d20", "tab:green"), ("sync-c0.1-dnone", "tab:red")),
             "skew": (("skew_sync-c1.0-d16", "tab:green"), ("skew_sync-c1.0-d27", "tab:red"))}
    for name, colour in scale.get(_fleet(async_name), ()):  # seed 0, for scale
        res = _load(out, f"{name}-s0")
        if res is not None:
            rows = [r for r in res["rounds"] if r["test_acc"] is not None]
            ax.plot([r["sim_time_s"] for r in rows], [r["test_acc"] for r in rows], color=colour, ls=":", lw=1.2,
                    label=f"{name} (seed 0)")
    ax.axhline(TARGET, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.6, 0.9)
    ax.set_xlim(0, max(1000, 100 * math.ceil(1.2 * max(t for t in reach if math.isfinite(t)) / 100)))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fleet = {"": "E = 1, 10x speed spread", "e2": "E = 2, 10x speed spread",
             "sp20": "E = 1, 20x speed spread", "av60": "E = 1, on/off 60/30 s",
             "skew": "10x spread tied to label"}.get(_fleet(async_name), "")
    ax.set_title(f"Fashion-MNIST 2nn, 100 devices, {fleet}, on 2/3 of the time (3 seeds)\n"
                 "best synchronous deadline found against FedBuff", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


def labels(seed: int = 0) -> None:
    """The skew fleet's data by speed: the label shares of the devices fast enough for a deadline."""
    from fedtiny import datasets, simulate
    argv = shlex.split(f"{FLEET} {VARIANTS['skew'][0]} --seed {seed}")
    ap = __import__("argparse").ArgumentParser()
    simulate.add_arguments(ap)
    cfg = simulate.config_from_args(ap.parse_args(argv))
    data = datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.seed, pixels="uint8")
    splits = datasets.partition(data.y_train, cfg.clients, cfg.partition, alpha=cfg.alpha, iid_share=cfg.iid_share,
                                shards_per_client=cfg.shards, holdout=cfg.holdout, seed=cfg.seed)
    speeds, _ = cfg.fleet(datasets.dominant_labels(data.y_train, splits))
    steps = np.array([cfg.epochs * math.ceil(s.n_samples / cfg.batch) for s in splits])
    print(f"seed {seed}: share of each label in the training data of the devices whose task fits the deadline")
    print("| deadline s | devices | " + " | ".join(f"label {c}" for c in range(10)) + " |")
    print("|---|---|" + "---|" * 10)
    for d in (6, 8, 10, 12, 16, 27, 54):
        fast = [k for k in range(cfg.clients) if steps[k] / speeds[k] <= d]
        h = np.bincount(np.concatenate([data.y_train[splits[k].train] for k in fast]), minlength=10)
        print(f"| {d} | {len(fast)} | " + " | ".join(f"{x:.2f}" for x in h / h.sum()) + " |")


def main(argv: list[str]) -> int:
    if argv[:1] == ["labels"]:
        labels(int(argv[1]) if len(argv) > 1 else 0)
        return 0
    if len(argv) < 2 or argv[0] not in ("run", "table", "plot"):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    if argv[0] == "run":
        only = argv[argv.index("--only") + 1:] if "--only" in argv else []
        jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else 1
        run(argv[1], [o for o in only if o != "--jobs"], jobs)
    elif argv[0] == "table":
        table(argv[1])
    else:
        plot(argv[1], argv[2], *(argv[3:5] if len(argv) > 3 else ()))   # [SYNC-SETTING ASYNC-SETTING]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
