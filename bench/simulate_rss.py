"""Peak RSS of `fedtiny simulate` in McMahan's setting (Fashion-MNIST, 2nn, K=100, C=0.1, E=1,
B=10, lr 0.05; the README's run):

    python bench/simulate_rss.py [--rounds 100] [-- extra simulate options]

Prints one line of JSON: the kernel's ru_maxrss of the simulate process (os.wait4) in KiB, MiB
and MB. This launcher imports neither numpy nor fedtiny (Linux carries a parent's peak across
exec into the child's ru_maxrss). `/usr/bin/time -v fedtiny simulate ...` reports the same figure
as "Maximum resident set size".
"""
import argparse
import json
import os
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("extra", nargs="*", help="more fedtiny simulate options (after --)")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "fedtiny.cli", "simulate", "--dataset", "fashion-mnist", "--model", "2nn",
           "--clients", "100", "--fraction", "0.1", "--epochs", "1", "--batch", "10", "--lr", "0.05",
           "--rounds", str(a.rounds), "--quiet", *a.extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"simulate exited with {code}", file=sys.stderr)
        return 1
    kib = usage.ru_maxrss
    print(json.dumps({"command": " ".join(["fedtiny", *cmd[3:]]), "peak_rss_kib": kib,
                      "peak_rss_mib": round(kib / 1024, 1), "peak_rss_mb": round(kib * 1024 / 1e6, 1),
                      "wall_s": round(time.monotonic() - t0, 1), "summary": out.strip().splitlines()[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
