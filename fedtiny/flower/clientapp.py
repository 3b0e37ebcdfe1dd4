"""The fedtiny ClientApp: a Flower SuperNode that is a fedtiny device, or a whole fedtiny fleet.

Which one comes from the SuperNode's node config (`flower-supernode --node-config ...`):
    data="PATH.npz"            a device: local SGD with fedtiny's C engine on arrays x, y of the
                               .npz, reply with an int8 update (records.py)
    fleet-uplink="PATH"        a fleet: hand the global model to `fedtiny fleet --uplink PATH`,
                               reply with the fleet's partial sum and sum n_k
    fleet-timeout=SECONDS      how long a fleet round may take (default 120)
The train config (model spec, lr, epochs, batch size, codec, seed) comes with each message from
FedtinyFedAvg. Seeds: training derive_seed(seed, round, node id, 1), encoding (..., 2), the
scheme `fedtiny client` uses with its device id.
"""
from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import codec, model as model_mod, train
from ..net.common import load_data
from ..seeds import derive_seed
from . import records, uplink

log = logging.getLogger("fedtiny.flower")

ROUNDING = {"int8": "nearest", "int8-stochastic": "stochastic"}
DEFAULT_FLEET_TIMEOUT = 120.0

app = ClientApp()


def _train_config(config) -> dict:
    missing = [k for k in records.TRAIN_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"the train message lacks {', '.join(missing)}: run the ServerApp with FedtinyFedAvg")
    cfg = {k: config[k] for k in records.TRAIN_CONFIG_KEYS}
    if cfg["codec"] not in ROUNDING:
        raise ValueError(f"codec {cfg['codec']!r}: a Flower ClientApp keeps no state between rounds, "
                         f"use one of {', '.join(ROUNDING)}")
    cfg["server-round"] = int(config.get("server-round", 0))
    return cfg


def device_update(m: model_mod.Model, global_params: np.ndarray, x, y, cfg: dict, node_id: int):
    """Local SGD from the global model, then its int8 delta: (Int8Update, TrainResult)."""
    params = global_params.copy()
    res = train.local_sgd(m, params, x, y, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch-size"]),
                          lr=float(cfg["lr"]), seed=derive_seed(int(cfg["seed"]), cfg["server-round"], node_id, 1))
    params -= global_params
    update = codec.encode(params, rounding=ROUNDING[cfg["codec"]],
                          seed=derive_seed(int(cfg["seed"]), cfg["server-round"], node_id, 2))
    return update, res


def _load_local(context: Context, m: model_mod.Model):
    path = context.node_config.get("data")
    if not isinstance(path, str) or not path:
        raise ValueError("this SuperNode has neither node config data=PATH.npz (a device) nor "
                         "fleet-uplink=PATH (a fleet): start flower-supernode with --node-config")
    return load_data(path, m)


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    cfg = _train_config(msg.content.config_records[records.CONFIG])
    m = model_mod.build(cfg["fedtiny-model"])
    global_params = records.flat_params(m, msg.content.array_records[records.ARRAYS])
    fleet = context.node_config.get("fleet-uplink")
    if fleet:
        header, partial = uplink.request_round(
            str(fleet), global_params,
            {"lr": cfg["lr"], "epochs": cfg["epochs"], "batch": cfg["batch-size"], "codec": cfg["codec"],
             "flower_round": cfg["server-round"]},
            float(context.node_config.get("fleet-timeout", DEFAULT_FLEET_TIMEOUT)))
        content = records.partial_sum_reply(partial, float(header["total_weight"]), int(header["updates"]),
                                            **{"train-loss": header.get("train_loss")})
        return Message(content=content, reply_to=msg)
    x, y = _load_local(context, m)
    update, res = device_update(m, global_params, x, y, cfg, context.node_id)
    content = records.int8_reply(update, res.n_samples, **{"train-loss": float(res.loss), "steps": res.steps})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    if context.node_config.get("fleet-uplink"):
        raise ValueError("a fleet node does not evaluate (its devices keep their data): "
                         "set fraction-evaluate = 0 or sample devices only")
    m = model_mod.build(msg.content.config_records[records.CONFIG]["fedtiny-model"])
    params = records.flat_params(m, msg.content.array_records[records.ARRAYS])
    x, y = _load_local(context, m)
    loss, acc = train.evaluate(m, params, x, y)
    return Message(content=RecordDict({records.METRICS: MetricRecord(
        {records.WEIGHT: int(len(y)), "eval-loss": loss, "eval-acc": acc})}), reply_to=msg)
