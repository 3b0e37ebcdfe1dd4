"""Wall-clock and CPU time of one SGD step, fedtiny and PyTorch (1 thread) alternating in fresh
processes, best of R rounds each: a cross-check of bench_train.py on a machine shared with other
jobs, where one pytest-benchmark group can land in a busy moment and another in a quiet one.

    python bench/train_step_wall.py [--spec cnn] [--batch 32] [--steps 40] [--rounds 4]

Prints one Markdown row per framework: min wall ms/step, min CPU ms/step.
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
spec, batch, steps, fw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
shape = (784,) if spec == "2nn" else (28, 28, 1)
x = rng.random((batch * steps,) + shape).astype(np.float32)
y = rng.integers(0, 10, batch * steps)
if fw == "fedtiny":
    from fedtiny import model, train
    m = model.build(spec)
    p = m.init(0)
    run = lambda: train.local_sgd(m, p, x, y, epochs=1, batch_size=batch, lr=0.01)
else:
    import torch
    torch.set_num_threads(1)
    nn = torch.nn
    net = (nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
           if spec == "2nn" else
           nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10)))
    xt = torch.from_numpy(x if spec == "2nn" else np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    lossf = nn.CrossEntropyLoss()
    def run():
        for j in range(0, len(x), batch):
            opt.zero_grad()
            lossf(net(xt[j:j + batch]), yt[j:j + batch]).backward()
            opt.step()
run()
t, c = time.perf_counter(), time.process_time()
run()
print(json.dumps({"wall": (time.perf_counter() - t) / steps, "cpu": (time.process_time() - c) / steps}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="cnn", choices=["2nn", "cnn"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    best = {}
    for _ in range(a.rounds):
        for fw in ("fedtiny", "torch"):
            out = subprocess.run([sys.executable, "-c", CHILD, a.spec, str(a.batch), str(a.steps), fw],
                                 capture_output=True, text=True, env=None)
            if out.returncode != 0:
                raise SystemExit(f"{fw}: {out.stderr.strip().splitlines()[-1]}")
            r = json.loads(out.stdout)
            b = best.setdefault(fw, {"wall": float("inf"), "cpu": float("inf")})
            b["wall"], b["cpu"] = min(b["wall"], r["wall"]), min(b["cpu"], r["cpu"])
    print(f"| framework | {a.spec} b{a.batch} wall ms/step (min of {a.rounds}) | CPU ms/step |")
    print("|---|---|---|")
    for fw, b in best.items():
        print(f"| {fw} | {b['wall'] * 1e3:.3f} | {b['cpu'] * 1e3:.3f} |")


if __name__ == "__main__":
    main()
