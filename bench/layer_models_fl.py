"""Federated vs centralized training of issue 17's models (docs/training.md, "Any small model"):

  * the 1-D CNN (bench_train.SENSOR_1D) on a synthetic 3-axis accelerometer dataset (sensor_windows
    below: seeded, documented, nothing downloaded);
  * the depthwise-separable net (bench_train.DSNET) on Fashion-MNIST (Debian dataset-fashion-mnist).

    python bench/layer_models_fl.py sensor [--rounds R]
    python bench/layer_models_fl.py fashion [--rounds R] [--train N]

Each prints one line per model: FedAvg's final test accuracy (simulate.run, IID split over
--clients, --fraction of them per round, --epochs local epochs) and centralized SGD on the pooled
training set with the same model, batch and learning rate, for as many epochs as a federated
client trains in total (rounds x epochs x fraction of the data passes): like-for-like compute.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import DSNET, SENSOR_1D  # noqa: E402

from fedtiny import datasets, simulate  # noqa: E402
from fedtiny import model as fm  # noqa: E402
from fedtiny import train as ft  # noqa: E402

ACTIVITIES = ("still", "walking", "running", "stairs", "machine-vibration", "shaking")
RATE_HZ, WINDOW = 50, 128


def sensor_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n windows of a 3-axis accelerometer (in g) at 50 Hz, 128 samples (2.56 s), 6 classes.

    Every window: gravity (1 g) along a random device orientation (tilted up to 35 degrees from
    z), plus the class's motion, plus Gaussian sensor noise (sigma 0.03-0.08 g):
      still              nothing more;
      walking            a 1.6-2.2 Hz step wave, 0.2-0.4 g vertical, half that sideways;
      running            a 2.6-3.4 Hz step wave, 0.6-1.0 g vertical, with its second harmonic;
      stairs             a 1.4-1.9 Hz wave whose second harmonic (0.5-0.8 of it) gives each step two peaks;
      machine-vibration  a 9-14 Hz sinusoid of 0.05-0.15 g on every axis (a motor running);
      shaking            2-4 Gaussian-windowed bursts of broadband noise (0.4-0.8 g).
    Phases, frequencies and amplitudes are drawn per window from numpy's PCG64 with `seed`."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW) / RATE_HZ
    y = rng.integers(0, len(ACTIVITIES), n)
    x = np.empty((n, WINDOW, 3), np.float32)
    for i, c in enumerate(y):
        tilt, az = np.deg2rad(rng.uniform(0, 35)), rng.uniform(0, 2 * np.pi)
        up = np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)])
        side = np.cross(up, [1.0, 0.0, 0.0])
        side /= np.linalg.norm(side)
        sig = np.tile(up, (WINDOW, 1))
        ph = rng.uniform(0, 2 * np.pi)
        if c in (1, 2, 3):
            f = rng.uniform(*{1: (1.6, 2.2), 2: (2.6, 3.4), 3: (1.4, 1.9)}[c])
            a = rng.uniform(*{1: (0.2, 0.4), 2: (0.6, 1.0), 3: (0.2, 0.4)}[c])
            h2 = {1: 0.1, 2: 0.3, 3: rng.uniform(0.5, 0.8)}[c]
            v = a * (np.sin(2 * np.pi * f * t + ph) + h2 * np.sin(4 * np.pi * f * t + 2 * ph))
            s = 0.5 * a * np.sin(np.pi * f * t + ph)  # sideways sway at half the step rate
            sig += v[:, None] * up + s[:, None] * side
        elif c == 4:
            f = rng.uniform(9, 14)
            sig += rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * f * t[:, None] + rng.uniform(0, 2 * np.pi, 3))
        elif c == 5:
            for _ in range(rng.integers(2, 5)):
                mu, w = rng.uniform(0, t[-1]), rng.uniform(0.1, 0.3)
                env = np.exp(-0.5 * ((t - mu) / w) ** 2)
                sig += rng.uniform(0.4, 0.8) * env[:, None] * rng.normal(size=(WINDOW, 3))
        sig += rng.normal(0, rng.uniform(0.03, 0.08), sig.shape)
        x[i] = sig
    return x, y.astype(np.int64)


def compare(name: str, spec: str, data: datasets.Dataset, *, clients: int, fraction: float, rounds: int,
            epochs: int, batch: int, lr: float, seed: int = 0) -> None:
    m = fm.build(spec)
    t0 = time.perf_counter()
    cfg = simulate.SimConfig(model=spec, clients=clients, fraction=fraction, rounds=rounds, epochs=epochs,
                             batch=batch, lr=lr, seed=seed)
    res = simulate.run(cfg, data=data)
    t_fl = time.perf_counter() - t0
    fl_acc = res.summary["final_test_acc"]
    # centralized: the pooled training set, as many passes over the data as the federation made
    passes = max(1, round(rounds * epochs * fraction))
    p = m.init(seed)
    t0 = time.perf_counter()
    ft.local_sgd(m, p, data.x_train, data.y_train, epochs=passes, batch_size=batch, lr=lr, seed=seed)
    t_c = time.perf_counter() - t0
    _, c_acc = ft.evaluate(m, p, data.x_test, data.y_test)
    print(f"{name}: {m.n_params} parameters; FedAvg {clients} clients x{fraction} {rounds} rounds E={epochs} "
          f"B={batch} lr={lr}: test acc {fl_acc:.4f} ({t_fl:.0f} s wall) | centralized {passes} epochs: "
          f"{c_acc:.4f} ({t_c:.0f} s wall)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("sensor", "fashion"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--train", type=int, default=60000, help="Fashion-MNIST training images used")
    a = ap.parse_args()
    if a.which == "sensor":
        x, y = sensor_windows(6000, seed=1)
        xt, yt = sensor_windows(2000, seed=2)
        data = datasets.Dataset("synthetic-accel", x, y, xt, yt, len(ACTIVITIES))
        compare("1-D CNN, synthetic accelerometer", SENSOR_1D, data, clients=20, fraction=0.25, rounds=a.rounds,
                epochs=1, batch=16, lr=0.05)
    else:
        d = datasets.load("fashion-mnist")
        data = datasets.Dataset("fashion-mnist", d.x_train[:a.train], d.y_train[:a.train], d.x_test, d.y_test, 10)
        compare("depthwise-separable net, Fashion-MNIST", DSNET, data, clients=100, fraction=0.1, rounds=a.rounds,
                epochs=1, batch=10, lr=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
