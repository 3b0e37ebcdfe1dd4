"""One SGD step (forward + backward + update), fedtiny beside PyTorch (CPU, 1 thread) and a
numpy/OpenBLAS float32 reference, in the same run; and the peak RSS of a training process.

    OPENBLAS_NUM_THREADS=1 pytest bench/bench_train.py --benchmark-only --benchmark-timer=time.process_time \
        --benchmark-columns=min,median,mean,rounds

Every benchmark call runs STEPS steps over fresh batches of one shuffled epoch (fedtiny: one
local_sgd call, so its per-call cost -- argument checks, weight layout load/store -- is included);
divide the times by STEPS for one step. Groups: "2nn b10", "2nn b32", "cnn b32", "1d-cnn b32",
"dsnet b32" (the last two: fedtiny and PyTorch only). Every framework
runs one thread, so process CPU time (the timer above) is its cost and is far less disturbed by
other jobs on a shared machine than wall-clock time. Peak RSS: `pytest bench/bench_train.py -k rss -s`.
"""
import json
import os
import subprocess
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # effective when this file is imported first

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fedtiny import model as fm  # noqa: E402
from fedtiny import train as ft  # noqa: E402

STEPS = 20
LR = 0.01
# issue 17's models: a 1-D CNN over a 128-sample 3-axis accelerometer window (6 activities) and a
# depthwise-separable (MobileNet-style) image net; both also in docs/training.md
SENSOR_1D = "seq:128x3,conv16k5s2same,relu,pool,conv32k3same,relu,pool,conv32k3same,relu,gap,dense6"
DSNET = ("seq:28x28x1,conv16k3s2same,relu6,dwk3same,relu6,conv32k1,relu6,dwk3s2same,relu6,conv64k1,relu6,"
         "gap,dense10")
ALIAS = {"1d-cnn": SENSOR_1D, "dsnet": DSNET}
CASES = [("2nn", 10), ("2nn", 32), ("cnn", 32)]
NEW_CASES = [("1d-cnn", 32), ("dsnet", 32)]  # fedtiny and PyTorch only (NumpyNet has no such layers)
HERE = os.path.dirname(os.path.abspath(__file__))


def batches(spec, batch):
    m = fm.build(ALIAS.get(spec, spec))
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * batch,) + m.input_shape).astype(np.float32)
    y = rng.integers(0, m.n_classes, STEPS * batch)
    return m, x, y


# ---- numpy float32 reference (matmul = OpenBLAS sgemm) ------------------------------------------

class NumpyNet:
    """The same models in plain numpy float32: im2col convolutions, matmul for every product."""

    def __init__(self, m, params):
        self.m = m
        self.t = [(w.copy(), b.copy()) for w, b in m.tensors(params.copy())]

    def step(self, x, y):
        acts, caches, a, ti = [], [], x.reshape((x.shape[0],) + tuple(self.m.layers[0].in_shape)), 0
        for lay in self.m.layers:
            if lay.kind == "dense":
                W, b = self.t[ti]
                caches.append(a.reshape(a.shape[0], -1))
                a = caches[-1] @ W.T + b
                ti += 1
            elif lay.kind == "conv2d":
                W, b = self.t[ti]
                k = lay.k
                v = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(1, 2))
                cols = v.transpose(0, 1, 2, 4, 5, 3).reshape(a.shape[0], lay.out_shape[0], lay.out_shape[1], -1)
                caches.append((a.shape, cols))
                a = cols @ W.reshape(W.shape[0], -1).T + b
                ti += 1
            elif lay.kind == "relu":
                a = np.maximum(a, 0)
                caches.append(a)
            elif lay.kind == "maxpool2":
                n, h, w, c = a.shape
                win = a[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
                out = win.max(axis=(2, 4))
                caches.append((a.shape, win, out))
                a = out
            else:
                caches.append(a.shape)
                a = a.reshape(a.shape[0], -1)
            acts.append(a)
        z = a
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        g = p / len(y)
        ti = len(self.t)
        for lay, c in zip(reversed(self.m.layers), reversed(caches)):
            if lay.kind == "dense":
                ti -= 1
                W, b = self.t[ti]
                g2 = g.reshape(g.shape[0], -1)
                dx = g2 @ W if ti > 0 else None
                W -= LR * (g2.T @ c)
                b -= LR * g2.sum(0)
                g = dx
            elif lay.kind == "conv2d":
                ti -= 1
                W, b = self.t[ti]
                shape, cols = c
                oc = W.shape[0]
                g2 = g.reshape(-1, oc)
                dW = (g2.T @ cols.reshape(-1, cols.shape[-1])).reshape(W.shape)
                if ti > 0:
                    k = lay.k
                    dcols = (g2 @ W.reshape(oc, -1)).reshape(g.shape[:3] + (k, k, shape[3]))
                    dx = np.zeros(shape, np.float32)
                    for kh in range(k):
                        for kw in range(k):
                            dx[:, kh:kh + g.shape[1], kw:kw + g.shape[2]] += dcols[:, :, :, kh, kw]
                    g = dx
                W -= LR * dW
                b -= LR * g2.sum(0)
            elif lay.kind == "relu":
                g = g * (c > 0)
            elif lay.kind == "maxpool2":
                shape, win, out = c
                mask = win == out[:, :, None, :, None, :]
                dx = np.zeros(shape, np.float32)
                n, h, w, ch = shape
                dx[:, :h // 2 * 2, :w // 2 * 2] = (mask * g[:, :, None, :, None, :]).reshape(n, h // 2 * 2, w // 2 * 2, ch)
                g = dx
            else:
                g = g.reshape(c)
            if g is None:
                break


def torch_net(spec):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    nn = torch.nn
    if spec == "2nn":
        return torch, nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    if spec == "1d-cnn":  # PyTorch pads symmetrically: same shapes and FLOPs as TensorFlow's SAME here
        return torch, nn.Sequential(nn.Conv1d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                                    nn.Conv1d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                    nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                    nn.Flatten(), nn.Linear(32, 6))
    if spec == "dsnet":
        return torch, nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU6(),
                                    nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
                                    nn.Conv2d(16, 32, 1), nn.ReLU6(),
                                    nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), nn.ReLU6(),
                                    nn.Conv2d(32, 64, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(64, 10))
    return torch, nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
                                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10))


# ---- the step benchmarks ------------------------------------------------------------------------

@pytest.mark.parametrize("spec,batch", CASES + NEW_CASES, ids=[f"{s}-b{b}" for s, b in CASES + NEW_CASES])
def test_step_fedtiny(benchmark, spec, batch):
    m, x, y = batches(spec, batch)
    p = m.init(0)
    benchmark.group = f"{spec} b{batch} ({STEPS} steps)"
    r = benchmark(lambda: ft.local_sgd(m, p, x, y, epochs=1, batch_size=batch, lr=LR))
    assert r.steps == STEPS and np.isfinite(r.loss)


@pytest.mark.parametrize("spec,batch", CASES, ids=[f"{s}-b{b}" for s, b in CASES])
def test_step_fedtiny_int8(benchmark, spec, batch):
    """int8 weights: dequantize + stochastically re-quantize every weight each step."""
    m, x, y = batches(spec, batch)
    p = m.init(0)
    benchmark.group = f"{spec} b{batch} ({STEPS} steps)"
    r = benchmark(lambda: ft.local_sgd(m, p, x, y, epochs=1, batch_size=batch, lr=LR, weights="int8"))
    assert r.steps == STEPS and np.isfinite(r.loss)


@pytest.mark.parametrize("spec,batch", CASES, ids=[f"{s}-b{b}" for s, b in CASES])
def test_step_numpy(benchmark, spec, batch):
    m, x, y = batches(spec, batch)
    net = NumpyNet(m, m.init(0))
    idx = ft.epoch_order(len(x), 0, 0)

    def run():
        for j in range(0, len(x), batch):
            b = idx[j:j + batch]
            net.step(x[b], y[b])

    benchmark.group = f"{spec} b{batch} ({STEPS} steps)"
    benchmark(run)
    assert all(np.isfinite(w).all() for w, _ in net.t)


@pytest.mark.optional
@pytest.mark.parametrize("spec,batch", CASES + NEW_CASES, ids=[f"{s}-b{b}" for s, b in CASES + NEW_CASES])
def test_step_torch(benchmark, spec, batch):
    torch, net = torch_net(spec)
    m, x, y = batches(spec, batch)
    xt = torch.from_numpy(x if spec == "2nn" else np.ascontiguousarray(x.transpose(0, 2, 1)) if x.ndim == 3
                          else np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    lossf = torch.nn.CrossEntropyLoss()
    idx = torch.from_numpy(ft.epoch_order(len(x), 0, 0).astype(np.int64))

    def run():
        for j in range(0, len(x), batch):
            b = idx[j:j + batch]
            opt.zero_grad()
            loss = lossf(net(xt[b]), yt[b])
            loss.backward()
            opt.step()

    benchmark.group = f"{spec} b{batch} ({STEPS} steps)"
    benchmark(run)


def test_numpy_reference_matches_engine():
    """The numpy baseline computes the same SGD (so the comparison is like for like)."""
    for spec in ("mlp:64-32-10", "seq:12x12x1,conv4k5,relu,pool,conv3k3,relu,flatten,dense10"):
        m = fm.build(spec)
        rng = np.random.default_rng(1)
        x = rng.random((8,) + m.input_shape).astype(np.float32)
        y = rng.integers(0, 10, 8)
        p = m.init(0)
        net = NumpyNet(m, p)
        net.step(x, y)
        ft.local_sgd(m, p, x, y, epochs=1, batch_size=8, lr=LR)
        for (w, b), (w2, b2) in zip(m.tensors(p), net.t):
            np.testing.assert_allclose(w, w2, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(b, b2, rtol=1e-4, atol=1e-6)


# ---- memory --------------------------------------------------------------------------------------

def peak_rss(*args):
    out = subprocess.run([sys.executable, os.path.join(HERE, "train_rss.py"), *args], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


fashion = pytest.mark.skipif(
    not os.path.exists(os.path.join(os.environ.get("FEDTINY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"),
                                    "train-images-idx3-ubyte.gz")), reason="Fashion-MNIST not installed")


@fashion
@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_peak_rss_fedtiny(weights):
    """Fresh process: import fedtiny, train 2nn one epoch over 600 images. Target <= 45 MB."""
    r = peak_rss("fedtiny", "--weights", weights)
    print(f"\nfedtiny 2nn {weights}: VmHWM {r['vmhwm_kb'] / 1024:.1f} MiB")
    assert r["steps"] == 60 and r["vmhwm_kb"] <= 45 * 1024


@fashion
@pytest.mark.optional
def test_peak_rss_torch():
    pytest.importorskip("torch")
    r = peak_rss("torch")
    print(f"\ntorch 2nn: VmHWM {r['vmhwm_kb'] / 1024:.1f} MiB")
    assert r["steps"] == 60
