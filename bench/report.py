"""Print the README table from a pytest-benchmark JSON file: per kernel and size, the fedtiny
time, GB/s (float32 model bytes / time), and the ratios to numpy and to np.copyto.

    pytest bench/bench_codec.py --benchmark-only --benchmark-json=codec.json
    python bench/report.py codec.json
"""
import json
import sys


def main(path: str) -> None:
    rows = {}
    for b in json.load(open(path))["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault((info["kind"], info["n"]), {})[info["impl"]] = (b["stats"]["median"], info)
    print("| kernel | params | fedtiny | GB/s | numpy | fedtiny vs numpy | np.copyto GB/s | fedtiny / copy bandwidth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (kind, n), impls in sorted(rows.items()):
        if "fedtiny" not in impls:
            continue
        t, info = impls["fedtiny"]
        gbs = info["f32_bytes"] / t / 1e9
        tn = impls.get("numpy", (float("nan"),))[0]
        tc = impls.get("np.copyto", (float("nan"),))[0]
        cgbs = info["f32_bytes"] / tc / 1e9
        print(f"| {kind} ({info['simd']}) | {n:,} | {t * 1e6:,.1f} µs | {gbs:.1f} | {tn * 1e6:,.1f} µs | "
              f"{tn / t:.1f}× | {cgbs:.1f} | {gbs / cgbs:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/report.py BENCHMARK.json")
    main(sys.argv[1])
