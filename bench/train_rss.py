"""Peak RSS (VmHWM) of a fresh process that imports a framework and trains 2nn for one epoch over
the first 600 real Fashion-MNIST training images (batch 10, lr 0.05).

    python bench/train_rss.py fedtiny [--weights int8] | torch

Prints one line of JSON: {"framework", "weights", "vmhwm_kb", "steps", "loss"}. Only the 600
images are read from the gzip stream, so the data costs 600*784 bytes, not the 47 MB file.
"""
import argparse
import gzip
import json
import os
import sys

N, BATCH, LR = 600, 10, 0.05
FASHION_DIR = os.environ.get("FEDTINY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def read_first(path: str, n: int, item_bytes: int):
    """The first n items of an unsigned-byte IDX .gz file (header skipped), as bytes."""
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        if head[:3] != b"\x00\x00\x08":
            raise SystemExit(f"{path}: not an unsigned-byte IDX file")
        f.read(4 * head[3])
        return f.read(n * item_bytes)


def vmhwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise SystemExit("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("framework", choices=["fedtiny", "torch"])
    ap.add_argument("--weights", choices=["float32", "int8"], default="float32")
    a = ap.parse_args()
    try:
        xb = read_first(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"), N, 784)
        yb = read_first(os.path.join(FASHION_DIR, "train-labels-idx1-ubyte.gz"), N, 1)
    except OSError as e:
        raise SystemExit(f"cannot read Fashion-MNIST: {e}")
    if a.framework == "fedtiny":
        import numpy as np

        from fedtiny import model, train
        x = np.frombuffer(xb, np.uint8).reshape(N, 784).astype(np.float32) / np.float32(255)
        y = np.frombuffer(yb, np.uint8).astype(np.int64)
        m = model.build("2nn")
        p = m.init(0)
        r = train.local_sgd(m, p, x, y, epochs=1, batch_size=BATCH, lr=LR, weights=a.weights, seed=0)
        steps, loss = r.steps, r.loss
    else:
        import torch
        torch.set_num_threads(1)
        x = torch.frombuffer(bytearray(xb), dtype=torch.uint8).reshape(N, 784).float() / 255
        y = torch.frombuffer(bytearray(yb), dtype=torch.uint8).long()
        nn = torch.nn
        net = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
        total, steps = 0.0, 0
        for j in range(0, N, BATCH):
            b = perm[j:j + BATCH]
            opt.zero_grad()
            loss_t = nn.functional.cross_entropy(net(x[b]), y[b])
            loss_t.backward()
            opt.step()
            total += float(loss_t.detach()) * len(b)
            steps += 1
        loss = total / N
    json.dump({"framework": a.framework, "weights": a.weights, "vmhwm_kb": vmhwm_kb(), "steps": steps,
               "loss": round(loss, 4)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
