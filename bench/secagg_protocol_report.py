"""The table of docs/secagg.md "Measured" from bench_secagg_protocol.py's JSON: medians and the
ratios the issue asks for (device protocol against local training, SecAgg round against int8 round).

    python bench/secagg_protocol_report.py secagg_protocol.json
"""
import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        benches = {b["name"]: b for b in json.load(f)["benchmarks"]}
    med = {name: b["stats"]["median"] * 1e3 for name, b in benches.items()}
    print("| benchmark | what | median ms | min ms |\n|---|---|---|---|")
    for name, b in benches.items():
        print(f"| {name} | {b['extra_info']['what']} | {med[name]:.2f} | {b['stats']['min'] * 1e3:.2f} |")
    proto = sum(med[f"test_device_secagg_{p}"] for p in ("keys", "shares", "mask"))
    print(f"\ndevice: SecAgg+ work of one round {proto:.1f} ms = {proto / med['test_device_train']:.2f}x its local "
          f"training ({med['test_device_train']:.1f} ms)")
    if "test_round_int8_10" in med and "test_round_secagg_10" in med:
        print(f"round of 10 (training included): SecAgg+ {med['test_round_secagg_10']:.0f} ms, int8 "
              f"{med['test_round_int8_10']:.0f} ms: {med['test_round_secagg_10'] / med['test_round_int8_10']:.2f}x")
    print(f"aggregator: unmasking 100 devices with 10 dropouts {med['test_aggregator_secagg_unmask_100']:.0f} ms; "
          f"adding 90 int8 updates {med['test_aggregator_int8_add_90']:.1f} ms")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
