"""One hostile device among 10 under central DP: final test accuracy with and without it, over a
few settings (docs/privacy.md "One bad device is bounded"). digits, mlp:64-32-10, 10 devices, all
in every round (--dp central --dp-sampling fixed --fraction 1), int8-stochastic, seed 0, the same
test-only noise stream with and without the attacker; device 0 sends its update sign-flipped x100
in every round.

    python bench/dp_bad_device.py          # one markdown row per setting
    python bench/dp_bad_device.py --fleet  # the utility table's setting: Fashion-MNIST, 2nn, 1,000 devices,
                                           # 100 per round (Poisson), clip 0.5, 30 rounds, seeds 0-2, central
                                           # DP at epsilon 8 (the same test-only noise stream with and
                                           # without the attacker) and clipping alone; device 0 sends x(-100)
"""
from __future__ import annotations

import sys

from fedtiny import bounds, datasets, simulate

SETTINGS = [  # (rounds, clip C, z, lr)
    (15, 1.0, 0.3, 0.05), (40, 1.0, 0.3, 0.05), (60, 1.0, 0.3, 0.05), (40, 0.5, 0.3, 0.05),
    (30, 1.0, 0.3, 0.2), (60, 1.0, 0.3, 0.2), (100, 1.0, 0.3, 0.2), (60, 0.5, 0.3, 0.2),
    (100, 0.5, 0.3, 0.2), (60, 0.3, 0.3, 0.2), (60, 0.5, 0.1, 0.2),
]


def accuracy(data, rounds, clip, z, lr, attack):
    cfg = simulate.SimConfig(dataset="digits", model="mlp:64-32-10", clients=10, fraction=1.0, rounds=rounds, lr=lr,
                             batch=10, codec="int8-stochastic", seed=0, max_samples=bounds.DEFAULT_MAX_SAMPLES,
                             clip_norm=clip, dp="central", dp_sampling="fixed", dp_test_seed=5, noise_multiplier=z)
    return simulate.run(cfg, data=data, attack=attack).summary["final_test_acc"]


def fleet() -> None:
    data = datasets.load("fashion-mnist", seed=0)
    print("| seed | mode | honest | one device x(-100) | difference (points) |")
    print("|---|---|---|---|---|")
    for seed in (0, 1, 2):
        for name, dp in (("central DP, epsilon 8", dict(dp="central", target_epsilon=8.0, dp_test_seed=5)), ("clipping only", {})):
            acc = []
            for attack in (None, (0, -100.0)):
                cfg = simulate.SimConfig(dataset="fashion-mnist", model="2nn", clients=1000, fraction=0.1, rounds=30,
                                         lr=0.05, batch=10, epochs=1, partition="iid", codec="int8-stochastic",
                                         seed=seed, clip_norm=0.5, delta=1e-5, eval_every=5, **dp)
                acc.append(simulate.run(cfg, data=data, attack=attack).summary["final_test_acc"])
            print(f"| {seed} | {name} | {acc[0]:.4f} | {acc[1]:.4f} | {100 * (acc[0] - acc[1]):.2f} |", flush=True)


def main() -> None:
    if "--fleet" in sys.argv[1:]:
        fleet()
        return
    data = datasets.load("digits", seed=0)
    print("| rounds | clip C | z | lr | honest | one device x(-100) | difference (points) |")
    print("|---|---|---|---|---|---|---|")
    for rounds, clip, z, lr in SETTINGS:
        a = accuracy(data, rounds, clip, z, lr, None)
        b = accuracy(data, rounds, clip, z, lr, (0, -100.0))
        print(f"| {rounds} | {clip:g} | {z:g} | {lr:g} | {a:.4f} | {b:.4f} | {100 * (a - b):.2f} |", flush=True)


if __name__ == "__main__":
    main()
