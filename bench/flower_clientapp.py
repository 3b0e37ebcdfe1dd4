"""Side by side in one Flower federation: the fedtiny ClientApp against a PyTorch ClientApp written
as Flower's PyTorch quickstart writes one, on the same data (the first 600 Fashion-MNIST training
images) and the same model (McMahan's 2NN, 784-200-200-10, 199,210 parameters), 1 epoch of plain
SGD, batch 10, lr 0.05, one thread each. A third SuperNode replies a zero int8 update without
training: the floor of a Flower ClientApp process (flwr, numpy, fedtiny's codec).

Real processes on 127.0.0.1: flower-superlink, three flower-supernode, `flwr run` (deployment
engine). Every train message runs in a new flwr-clientapp process, so each round's figures are
that process's: peak RSS (VmHWM), CPU seconds of the whole process (imports included) and of
the train handler alone (model, data, local SGD, the reply; the framework's import excluded),
and the bytes of the reply's arrays (what the node sends, before
Flower's own framing), from the ServerApp's capture of each reply.

    pip install 'fedtiny[flower]' torch==2.13.0
    python bench/flower_clientapp.py [--rounds 3]

Needs torch (not installed by CI; this script is not part of the test run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from flowerutil import Federation  # noqa: E402

from fedtiny import datasets  # noqa: E402

CLIENT_APP = '''
"""Bench ClientApp: fedtiny's, a PyTorch quickstart-style one, or a no-training floor (node config kind)."""
import resource
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def torch_train(msg: Message, context: Context) -> Message:
    """As Flower's PyTorch quickstart trains: the global arrays into a torch model, a DataLoader,
    SGD, the state_dict back. The model and hyperparameters are fedtiny's (2NN, plain SGD)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    model.load_state_dict({k: torch.from_numpy(a) for k, a in zip(model.state_dict(), arrays)})
    with np.load(context.node_config["data"]) as z:
        x, y = torch.from_numpy(z["x"].reshape(len(z["y"]), -1)), torch.from_numpy(z["y"].astype(np.int64))
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=msg.content["config"]["lr"])
    model.train()
    running = 0.0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        running += loss.item()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train-loss": running / len(loader), "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


def floor(msg: Message, context: Context) -> Message:
    from fedtiny import codec
    from fedtiny.flower import records
    n = sum(a.size for a in msg.content["arrays"].to_numpy_ndarrays())
    return Message(content=records.int8_reply(codec.encode(np.zeros(n, np.float32)), 1), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    kind = context.node_config["kind"]
    if kind == "torch":
        import torch  # noqa: F401  (the import is in the process figures, not in the training's)
    t0 = time.process_time()
    if kind == "torch":
        reply = torch_train(msg, context)
    elif kind == "floor":
        reply = floor(msg, context)
    else:
        from fedtiny.flower.clientapp import app as fedtiny_app
        reply = fedtiny_app(msg, context)
    train_cpu = time.process_time() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    metrics = reply.content.metric_records["metrics"]
    with open("/proc/self/status") as f:   # VmHWM: this process image's peak (ru_maxrss keeps the forking parent's)
        metrics["bench-maxrss-kib"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    metrics["bench-process-cpu-s"] = ru.ru_utime + ru.ru_stime
    metrics["bench-train-cpu-s"] = train_cpu
    return reply
'''

PYPROJECT = '''
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "benchapp"
version = "1.0.0"
description = "fedtiny ClientApp against a PyTorch ClientApp"
license = "MIT"
dependencies = ["fedtiny[flower]", "torch"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedtiny"

[tool.flwr.app.components]
serverapp = "fedtiny.flower.serverapp:app"
clientapp = "benchapp.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
model = "2nn"
seed = 0
lr = 0.05
epochs = 1
batch-size = 10
codec = "int8-stochastic"
fraction-train = 1.0
fraction-evaluate = 0.0
min-nodes = 3
round-timeout = 300.0
test-dataset = ""
out-dir = ""
capture-dir = ""
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("flower_clientapp.py: error: needs torch (pip install torch==2.13.0)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fedtiny-flower-bench-") as work:
        data = datasets.load("fashion-mnist", None, seed=0)
        npz = os.path.join(work, "data.npz")
        np.savez(npz, x=data.x_train[:600].reshape(600, -1), y=data.y_train[:600])
        app = os.path.join(work, "app")
        os.makedirs(os.path.join(app, "benchapp"))
        with open(os.path.join(app, "pyproject.toml"), "w") as f:
            f.write(textwrap.dedent(PYPROJECT))
        open(os.path.join(app, "benchapp", "__init__.py"), "w").close()
        with open(os.path.join(app, "benchapp", "client_app.py"), "w") as f:
            f.write(CLIENT_APP)
        capture = os.path.join(work, "capture")
        fed = Federation(os.path.join(work, "fed"))
        os.makedirs(fed.dir, exist_ok=True)
        try:
            fed.start_superlink()
            nodes = {"fedtiny": f'kind="fedtiny" data="{npz}"', "torch": f'kind="torch" data="{npz}"',
                     "floor": 'kind="floor"'}
            fed.start_supernodes(nodes)
            res = fed.run(app, f'num-server-rounds={args.rounds} capture-dir="{capture}"', timeout=900)
            if res.returncode != 0 or not os.path.isdir(capture):
                print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
                return 1
            node_kind = {}
            for name in nodes:   # which Flower node id is which: each SuperNode's log names its own
                for line in fed.log(name).splitlines():
                    if "SuperNode ID:" in line:
                        node_kind[int(line.rsplit(":", 1)[1])] = name
        finally:
            fed.stop()
        rows: dict[str, list[dict]] = {k: [] for k in nodes}
        for f in sorted(os.listdir(capture)):
            with np.load(os.path.join(capture, f)) as z:
                meta = json.loads(z["meta"].tobytes())
                nbytes = sum(z[a["blob"]].size for a in meta["arrays"])
            mt = meta["metrics"]["metrics"]
            rows[node_kind[meta["node"]]].append({"round": meta["round"], "rss": mt["bench-maxrss-kib"] / 1024,
                                                  "cpu": mt["bench-process-cpu-s"], "train": mt["bench-train-cpu-s"],
                                                  "bytes": nbytes})
    print(f"{args.rounds} Flower rounds, 2nn (199,210 parameters), 600 Fashion-MNIST images, 1 epoch, batch 10")
    print(f"{'ClientApp':<34} {'peak RSS MiB':>12} {'process CPU s':>13} {'train CPU s':>11} {'bytes sent':>11}")
    label = {"fedtiny": "fedtiny (C engine, int8 update)", "torch": "PyTorch 2.13 (quickstart style)",
             "floor": "floor (no training, zero update)"}
    for k, rs in rows.items():
        med = {c: statistics.median(r[c] for r in rs) for c in ("rss", "cpu", "train", "bytes")}
        print(f"{label[k]:<34} {med['rss']:>12.1f} {med['cpu']:>13.2f} {med['train']:>11.3f} {med['bytes']:>11,.0f}")
    print("(medians over the rounds; per round:", json.dumps(rows), ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
