"""fedtiny updates in Flower's records: the one place that knows the layout (docs/flower.md).

Downlink (the ServerApp's train message), what every Flower client reads:
    "arrays"  ArrayRecord  the global model as the model's tensors in layer order, keys "0", "1",
                           ...: weight then bias of each layer (Dense W[out][in], PyTorch's
                           nn.Linear layout), float32, Flower's ordinary "numpy.ndarray" arrays
    "config"  ConfigRecord "server-round" and the fedtiny keys in TRAIN_CONFIG_KEYS
Uplink, one of three kinds, told apart by the stype of the one Array under "arrays":
    fedtiny device   Array "fedtiny.int8-update", stype STYPE_INT8, dtype "uint8", shape (nbytes,):
                     data is the Int8Update wire bytes (docs/PROTOCOL.md "Int8Update"), 1.03 B/param
    fedtiny fleet    Array "fedtiny.partial-sum", stype STYPE_PARTIAL_SUM, dtype "float32",
                     shape (n_params,): data is sum_k n_k delta_k as little-endian float32
    ordinary client  the model's tensors (any float dtype, Flower's numpy arrays): its new weights
    "metrics" MetricRecord "num-examples" (the FedAvg weight n_k; a fleet's sum n_k), and
                     "train-loss", "fedtiny.updates" (updates in a partial sum) when known.
The two fedtiny stypes are not "numpy.ndarray" on purpose: a stock Flower strategy that meets
them fails with Flower's own "Unsupported serialization type" instead of averaging bytes.
"""
from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from ..codec import Int8Update
from ..model import Model

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
WEIGHT = "num-examples"
KEY_INT8 = "fedtiny.int8-update"
KEY_PARTIAL_SUM = "fedtiny.partial-sum"
STYPE_INT8 = "fedtiny.int8-update/1"
STYPE_PARTIAL_SUM = "fedtiny.partial-sum/1"
# the train config the strategy sends (besides Flower's "server-round")
TRAIN_CONFIG_KEYS = ("fedtiny-model", "lr", "epochs", "batch-size", "codec", "seed")

INT8, PARTIAL_SUM, WEIGHTS = "int8", "partial-sum", "weights"


def model_arrays(model: Model, params: np.ndarray) -> ArrayRecord:
    """The flat parameter vector as Flower's list of tensors (copies, layer order)."""
    return ArrayRecord([t.copy() for pair in model.tensors(params) for t in pair])


def flat_params(model: Model, record: ArrayRecord) -> np.ndarray:
    """Flower's list of tensors back into one float32 vector; shapes checked against the model."""
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"expected an ArrayRecord of the model's tensors, got {type(record).__name__}")
    want = [t.shape for pair in model.tensors(np.zeros(model.n_params, np.float32)) for t in pair]
    if len(record) != len(want):
        raise ValueError(f"{len(record)} arrays, model {model.spec!r} has {len(want)} tensors")
    out = np.empty(model.n_params, dtype=np.float32)
    off = 0
    for (key, arr), shape in zip(record.items(), want):
        if arr.stype != "numpy.ndarray":
            raise ValueError(f"array {key!r} has serialization {arr.stype!r}, expected numpy.ndarray")
        a = arr.numpy()
        if a.shape != shape or a.dtype.kind != "f":
            raise ValueError(f"array {key!r} is {a.dtype} {a.shape}, model {model.spec!r} needs floating {shape}")
        out[off:off + a.size] = a.reshape(-1)
        off += a.size
    if not np.isfinite(out).all():
        raise ValueError("the model's arrays hold NaN or Inf")
    return out


def _metrics(weight: float, extra: dict) -> MetricRecord:
    w = int(weight) if float(weight).is_integer() else float(weight)
    return MetricRecord({WEIGHT: w, **{k: v for k, v in extra.items() if v is not None}})


def int8_reply(update: Int8Update, n_samples: int, **metrics) -> RecordDict:
    """A fedtiny device's reply: its Int8Update bytes and its sample count."""
    data = update.to_bytes()
    arr = Array(dtype="uint8", shape=(len(data),), stype=STYPE_INT8, data=data)
    return RecordDict({ARRAYS: ArrayRecord({KEY_INT8: arr}), METRICS: _metrics(n_samples, metrics)})


def partial_sum_reply(partial_sum: np.ndarray, total_weight: float, updates: int, **metrics) -> RecordDict:
    """A fleet's reply: sum_k n_k delta_k (float32) and sum_k n_k."""
    data = np.ascontiguousarray(partial_sum, dtype="<f4").tobytes()
    arr = Array(dtype="float32", shape=(int(partial_sum.size),), stype=STYPE_PARTIAL_SUM, data=data)
    return RecordDict({ARRAYS: ArrayRecord({KEY_PARTIAL_SUM: arr}),
                       METRICS: _metrics(total_weight, {"fedtiny.updates": int(updates), **metrics})})


def reply_weight(content: RecordDict) -> float:
    """The reply's FedAvg weight ("num-examples" of its one MetricRecord): positive and finite."""
    rec = content.metric_records.get(METRICS)
    if rec is None or WEIGHT not in rec:
        raise ValueError(f"no MetricRecord {METRICS!r} with {WEIGHT!r} (the FedAvg weight n_k)")
    w = rec[WEIGHT]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise ValueError(f"{WEIGHT} must be a positive finite number, got {w!r}")
    return float(w)


def read_reply(model: Model, content: RecordDict):
    """(kind, payload, weight): INT8 -> Int8Update, PARTIAL_SUM -> float32 sum, WEIGHTS -> float32
    flat weights. Raises ValueError naming what is wrong; nothing is decoded before its checks."""
    rec = content.array_records.get(ARRAYS)
    if rec is None:
        raise ValueError(f"no ArrayRecord {ARRAYS!r}")
    weight = reply_weight(content)
    if len(rec) == 1:
        (key, arr), = rec.items()
        if arr.stype == STYPE_INT8:
            if key != KEY_INT8 or arr.dtype != "uint8":
                raise ValueError(f"an int8 update must be array {KEY_INT8!r} of dtype uint8, got {key!r} {arr.dtype}")
            update = Int8Update.from_bytes(arr.data)   # the codec's reader rule: header, size, blocks
            if len(update) != model.n_params:
                raise ValueError(f"int8 update of {len(update)} parameters, model {model.spec!r} has {model.n_params}")
            return INT8, update, weight
        if arr.stype == STYPE_PARTIAL_SUM:
            if key != KEY_PARTIAL_SUM or arr.dtype != "float32" or len(arr.data) != 4 * model.n_params:
                raise ValueError(f"a partial sum must be array {KEY_PARTIAL_SUM!r}: float32, {model.n_params} values "
                                 f"({4 * model.n_params} bytes); got {key!r} {arr.dtype}, {len(arr.data)} bytes")
            partial = np.frombuffer(arr.data, dtype="<f4").astype(np.float32)
            if not np.isfinite(partial).all():
                raise ValueError("partial sum holds NaN or Inf")
            return PARTIAL_SUM, partial, weight
    return WEIGHTS, flat_params(model, rec), weight
