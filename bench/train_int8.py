"""Accuracy and memory of int8-weight local SGD against float32 on the same run (same init, same
sample order), on the real Fashion-MNIST (first N training images, the full 10k test set).

    python bench/train_int8.py [--n 10000] [--epochs-2nn 3] [--epochs-cnn 1]

Prints a Markdown table: model, weights, test accuracy, test loss, arena bytes at the batch size,
bytes of the weights themselves while training (float32: 4 per parameter; int8: per-tensor blocks
of 128 int8 + one float32 scale).
"""
import argparse
import time

import numpy as np

from fedtiny import model as fm
from fedtiny import train as ft

def load(prefix: str, n: int | None):
    """The first n images of the real Fashion-MNIST split ("train" or "t10k"), in file order."""
    from fedtiny import datasets

    data = datasets.load("fashion-mnist")
    x, y = (data.x_train, data.y_train) if prefix == "train" else (data.x_test, data.y_test)
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y.astype(np.int64)


def weight_bytes(m: fm.Model, weights: str) -> int:
    if weights == "float32":
        return 4 * m.n_params
    sizes = [int(np.prod(lay.w_shape)) for lay in m.layers if lay.w_shape] + \
            [lay.b_shape[0] for lay in m.layers if lay.w_shape]
    return sum(-(-s // 128) * 132 for s in sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--epochs-2nn", type=int, default=3)
    ap.add_argument("--epochs-cnn", type=int, default=1)
    a = ap.parse_args()
    xtr, ytr = load("train", a.n)
    xte, yte = load("t10k", None)
    print(f"Fashion-MNIST: {len(xtr)} training images, {len(xte)} test images\n")
    print("| model | weights | epochs | batch | lr | test acc | test loss | weights in RAM | arena | time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec, epochs, batch, lr in (("2nn", a.epochs_2nn, 10, 0.05), ("cnn", a.epochs_cnn, 32, 0.05)):
        m = fm.build(spec)
        for weights in ("float32", "int8"):
            p = m.init(1)
            t = time.perf_counter()
            ft.local_sgd(m, p, xtr, ytr, epochs=epochs, batch_size=batch, lr=lr, weights=weights, seed=7)
            dt = time.perf_counter() - t
            loss, acc = ft.evaluate(m, p, xte, yte)
            print(f"| {spec} | {weights} | {epochs} | {batch} | {lr} | {acc:.4f} | {loss:.4f} | "
                  f"{weight_bytes(m, weights) / 1024:.0f} KiB | {m.arena_bytes(batch, weights=weights) / 1024:.0f} KiB "
                  f"| {dt:.1f} s |")


if __name__ == "__main__":
    main()
