"""The fedtiny ServerApp: FedtinyFedAvg over Flower's deployment engine, configured by run config.

Run config keys (pyproject.toml [tool.flwr.app.config], or `flwr run -c 'key=value'`):
    num-server-rounds, model, seed, lr, epochs, batch-size, codec,
    fraction-train, fraction-evaluate, min-nodes (train and available), round-timeout (seconds),
    max-samples, clip-norm (fedtiny.bounds, as `fedtiny aggregate --max-samples --clip-norm`; 0: off),
    test-dataset ("" for none: else the global model is evaluated on its test set each round),
    out-dir ("" for none: else global-<round>.npy, the flat float32 model after each round, round 0
    the initial one, and metrics.json are written there),
    capture-dir ("" for none: else every train reply as received, before any check, is written
    there as reply-<round>-<node>.npz: each Array's raw bytes and its dtype/shape/stype, and the
    MetricRecord, for audits and for the tests' independent FedAvg).
"""
from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp

from .. import datasets, model as model_mod, train
from ..net.state import atomic_write
from . import records
from .strategy import FedtinyFedAvg

log = logging.getLogger("fedtiny.flower")

DEFAULTS = {"num-server-rounds": 3, "model": "mlp:64-32-10", "seed": 0, "lr": 0.05, "epochs": 1,
            "batch-size": 10, "codec": "int8-stochastic", "fraction-train": 1.0, "fraction-evaluate": 0.0,
            "min-nodes": 2, "round-timeout": 300.0, "max-samples": 65535, "clip-norm": 1.0, "test-dataset": "", "out-dir": "",
            "capture-dir": ""}

app = ServerApp()


def capture_reply(directory: str, server_round: int, msg: Message) -> None:
    """Write one reply's records as received (raw Array bytes, no decoding)."""
    meta: dict = {"node": int(msg.metadata.src_node_id), "round": server_round, "error": None, "arrays": [],
                  "metrics": {}}
    blobs = {}
    if msg.has_error():
        meta["error"] = msg.error.reason
    else:
        for rname, rec in msg.content.array_records.items():
            for i, (key, arr) in enumerate(rec.items()):
                meta["arrays"].append({"record": rname, "key": key, "dtype": arr.dtype, "shape": list(arr.shape),
                                       "stype": arr.stype, "blob": f"a{len(blobs)}"})
                blobs[f"a{len(blobs)}"] = np.frombuffer(arr.data, dtype=np.uint8)
        for rname, rec in msg.content.metric_records.items():
            meta["metrics"][rname] = dict(rec)
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **blobs)
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, f"reply-{server_round}-{meta['node']}.npz"), buf.getvalue())


def _save(out_dir: str, round_id: int, params: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, params, allow_pickle=False)
    atomic_write(os.path.join(out_dir, f"global-{round_id}.npy"), buf.getvalue())


@app.main()
def main(grid: Grid, context: Context) -> None:
    unknown = sorted(set(context.run_config) - set(DEFAULTS))
    if unknown:
        log.warning("run config keys not used by the fedtiny ServerApp: %s", ", ".join(unknown))
    rc = {**DEFAULTS, **{k: v for k, v in context.run_config.items() if k in DEFAULTS}}
    m = model_mod.build(str(rc["model"]))
    min_nodes = int(rc["min-nodes"])
    strategy = FedtinyFedAvg(str(rc["model"]), lr=float(rc["lr"]), epochs=int(rc["epochs"]),
                             batch_size=int(rc["batch-size"]), codec=str(rc["codec"]), seed=int(rc["seed"]),
                             fraction_train=float(rc["fraction-train"]),
                             fraction_evaluate=float(rc["fraction-evaluate"]), min_train_nodes=min_nodes,
                             min_evaluate_nodes=min_nodes if float(rc["fraction-evaluate"]) > 0 else 0,
                             min_available_nodes=min_nodes,
                             max_samples=int(rc["max-samples"]) or None, clip_norm=float(rc["clip-norm"]) or None,
                             on_reply=(lambda r, msg: capture_reply(str(rc["capture-dir"]), r, msg))
                             if rc["capture-dir"] else None)
    initial = m.init(int(rc["seed"]))
    out_dir = str(rc["out-dir"])
    test = None
    if rc["test-dataset"]:
        data = datasets.load(str(rc["test-dataset"]), None, seed=int(rc["seed"]))
        test = (data.x_test, data.y_test)
    history: list[dict] = []

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        params = records.flat_params(m, arrays)
        row = {"round": server_round, **{k: v for k, v in strategy.last_counts.items()}}
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            _save(out_dir, server_round, params)
        out = None
        if test is not None:
            loss, acc = train.evaluate(m, params, *test)
            row.update({"test-loss": loss, "test-acc": acc})
            out = MetricRecord({"test-loss": loss, "test-acc": acc})
        history.append(row)
        if out_dir:
            atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(history, indent=1).encode())
        return out

    strategy.start(grid=grid, initial_arrays=records.model_arrays(m, initial), num_rounds=int(rc["num-server-rounds"]),
                   timeout=float(rc["round-timeout"]), evaluate_fn=after_round)
