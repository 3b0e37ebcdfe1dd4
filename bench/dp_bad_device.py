"""One hostile device among 10 under central DP: final test accuracy with and without it, over a
few settings (docs/privacy.md "One bad device is bounded"). digits, mlp:64-32-10, 10 devices, all
in every round (--dp central --dp-sampling fixed --fraction 1), int8-stochastic, seed 0, the same
test-only noise stream with and without the attacker; device 0 sends its update sign-flipped x100
in every round.

    python bench/dp_bad_device.py          # one markdown row per setting
"""
from __future__ import annotations

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


def main() -> None:
    data = datasets.load("digits", seed=0)
    print("| rounds | clip C | z | lr | honest | one device x(-100) | difference (points) |")
    print("|---|---|---|---|---|---|---|")
    for rounds, clip, z, lr in SETTINGS:
        a = accuracy(data, rounds, clip, z, lr, None)
        b = accuracy(data, rounds, clip, z, lr, (0, -100.0))
        print(f"| {rounds} | {clip:g} | {z:g} | {lr:g} | {a:.4f} | {b:.4f} | {100 * (a - b):.2f} |", flush=True)


if __name__ == "__main__":
    main()
