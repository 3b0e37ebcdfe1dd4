"""FedtinyFedAvg and the record layout, in process: the aggregate against a float64 FedAvg, and
every malformed reply dropped with its reason while the others still count. The device side
never imports Flower."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

import fedtiny  # noqa: E402
from fedtiny import codec, model as model_mod  # noqa: E402
from fedtiny.flower import records  # noqa: E402
from fedtiny.flower.strategy import FedtinyFedAvg  # noqa: E402

MODEL = "mlp:64-32-10"


@pytest.fixture(autouse=True)
def _flower_task_identity():
    """Flower stamps messages with the process's run and node: a ServerApp process's, here."""
    from flwr.supercore.task_identity import TaskIdentity
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _train_msg(strategy, global_params, node=1):
    arrays = records.model_arrays(strategy.model, global_params)
    strategy._global = records.flat_params(strategy.model, arrays)   # what configure_train records
    return Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                   dst_node_id=node, message_type="train")


def _reply(to: Message, content: RecordDict) -> Message:
    return Message(content=content, reply_to=to)


def _oracle(g, terms):
    num = sum(t for t, _ in terms)
    total = sum(n for _, n in terms)
    return g.astype(np.float64) + num / total


def _decode64(update: codec.Int8Update) -> np.ndarray:
    return (update.scales.astype(np.float64)[:, None]
            * update._buf[codec.HEADER_BYTES:].view(codec.BLOCK_DTYPE)["q"].astype(np.float64)).reshape(-1)[:len(update)]


def test_int8_float_and_partial_sum_replies_make_the_float64_fedavg():
    s = FedtinyFedAvg(MODEL, clip_norm=None)
    m = s.model
    rng = np.random.default_rng(3)
    g = m.init(1)
    msg = _train_msg(s, g)
    replies, terms = [], []
    for n in (40, 7):    # two fedtiny devices
        u = codec.encode(rng.normal(0, 0.02, m.n_params).astype(np.float32), rounding="stochastic", seed=n)
        replies.append(_reply(msg, records.int8_reply(u, n, **{"train-loss": 1.0})))
        terms.append((n * _decode64(u), n))
    partial = rng.normal(0, 0.5, m.n_params).astype(np.float32)          # a fleet: sum n_k delta_k, sum n_k
    replies.append(_reply(msg, records.partial_sum_reply(partial, 90, 3)))
    terms.append((partial.astype(np.float64), 90))
    w = [t + rng.normal(0, 0.01, t.shape) for t in records.model_arrays(m, g).to_numpy_ndarrays()]  # float64
    replies.append(_reply(msg, RecordDict({"arrays": ArrayRecord(w), "metrics": MetricRecord({"num-examples": 13})})))
    terms.append((13 * (np.concatenate([a.reshape(-1) for a in w]) - g.astype(np.float64)), 13))
    arrays, metrics = s.aggregate_train(1, replies)
    got = records.flat_params(m, arrays).astype(np.float64)
    want = _oracle(g, terms)
    mag = sum(np.abs(t) for t, _ in terms) / 150
    eps = np.finfo(np.float32).eps
    assert (np.abs(got - want) <= eps * (8 * mag + 2 * np.abs(want) + 2 * np.abs(g))).all()
    assert metrics["num-examples"] == 150 and metrics["fedtiny.devices"] == 2 + 3 + 1
    assert metrics["fedtiny.int8"] == 2 and metrics["fedtiny.partial-sum"] == 1 and metrics["fedtiny.weights"] == 1


def _good(s, msg, n=10, seed=0):
    u = codec.encode(np.full(s.model.n_params, 0.01, np.float32), seed=seed)
    return _reply(msg, records.int8_reply(u, n))


def _int8_bytes_with(s, mutate):
    data = bytearray(codec.encode(np.full(s.model.n_params, 0.01, np.float32)).to_bytes())
    mutate(data)
    return RecordDict({"arrays": ArrayRecord({records.KEY_INT8: Array("uint8", (len(data),), records.STYPE_INT8,
                                                                      bytes(data))}),
                       "metrics": MetricRecord({"num-examples": 5})})


HOSTILE = {
    "bad magic": lambda s: _int8_bytes_with(s, lambda d: d.__setitem__(0, ord("X"))),
    "int8 -128": lambda s: _int8_bytes_with(s, lambda d: d.__setitem__(codec.HEADER_BYTES + 4, 0x80)),
    "truncated": lambda s: _int8_bytes_with(s, lambda d: d.__delitem__(slice(-1, None))),
    "negative scale": lambda s: _int8_bytes_with(s, lambda d: d.__setitem__(slice(codec.HEADER_BYTES, codec.HEADER_BYTES + 4),
                                                                             np.float32(-1).tobytes())),
    "other model": lambda s: records.int8_reply(codec.encode(np.ones(100, np.float32)), 5),
    "zero weight": lambda s: records.int8_reply(codec.encode(np.ones(s.model.n_params, np.float32)), 0),
    "NaN weight": lambda s: RecordDict({"arrays": records.int8_reply(codec.encode(np.ones(s.model.n_params, np.float32)), 1)["arrays"],
                                        "metrics": MetricRecord({"num-examples": float("nan")})}),
    "no weight": lambda s: RecordDict({"arrays": records.int8_reply(codec.encode(np.ones(s.model.n_params, np.float32)), 1)["arrays"]}),
    "NaN partial sum": lambda s: records.partial_sum_reply(np.full(s.model.n_params, np.nan, np.float32), 10, 2),
    "short partial sum": lambda s: RecordDict({"arrays": ArrayRecord({records.KEY_PARTIAL_SUM: Array(
        "float32", (3,), records.STYPE_PARTIAL_SUM, b"\0" * 12)}), "metrics": MetricRecord({"num-examples": 3})}),
    "wrong shapes": lambda s: RecordDict({"arrays": ArrayRecord([np.zeros((3, 3))]),
                                          "metrics": MetricRecord({"num-examples": 3})}),
    "integer weights": lambda s: RecordDict({"arrays": ArrayRecord(
        [np.zeros(t.shape, np.int32) for t in records.model_arrays(s.model, s.model.init(0)).to_numpy_ndarrays()]),
        "metrics": MetricRecord({"num-examples": 3})}),
    "inf weights": lambda s: RecordDict({"arrays": ArrayRecord(
        [np.full(t.shape, np.inf, np.float32) for t in records.model_arrays(s.model, s.model.init(0)).to_numpy_ndarrays()]),
        "metrics": MetricRecord({"num-examples": 3})}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_malformed_reply_is_dropped_counted_and_the_rest_aggregated(case):
    s = FedtinyFedAvg(MODEL)
    g = s.model.init(0)
    msg = _train_msg(s, g)
    good = _good(s, msg, n=10)
    arrays, metrics = s.aggregate_train(1, [_reply(msg, HOSTILE[case](s)), good])
    assert metrics["fedtiny.bad_reply"] == 1 and metrics["fedtiny.int8"] == 1 and metrics["num-examples"] == 10
    want = g.astype(np.float64) + _decode64(codec.encode(np.full(s.model.n_params, 0.01, np.float32)))
    assert np.allclose(records.flat_params(s.model, arrays), want, rtol=0, atol=1e-6)


def test_with_no_valid_reply_the_model_is_unchanged():
    s = FedtinyFedAvg(MODEL)
    msg = _train_msg(s, s.model.init(0))
    assert s.aggregate_train(1, [_reply(msg, HOSTILE["bad magic"](s))]) == (None, None)
    assert s.last_counts["bad_reply"] == 1


def test_a_stock_flower_strategy_refuses_fedtiny_bytes_instead_of_averaging_them():
    s = FedtinyFedAvg(MODEL)
    rec = records.int8_reply(codec.encode(np.ones(s.model.n_params, np.float32)), 3)["arrays"]
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        rec.to_numpy_ndarrays()


def test_the_device_side_never_imports_flower():
    # No module outside fedtiny/flower imports flwr, and neither do the fleet and its uplink
    # (they run beside devices and bridges; Flower runs only in the ClientApp process).
    pkg = os.path.dirname(fedtiny.__file__)
    offenders = []
    for root, _d, files in os.walk(pkg):
        for f in files:
            path = os.path.join(root, f)
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(path, pkg)
            if rel.startswith("flower" + os.sep) and f not in ("fleet.py", "uplink.py", "__init__.py"):
                continue
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{rel} imports {n}" for n in names if n.split(".")[0] in ("flwr", "grpc")]
    assert not offenders, offenders
    code = ("import sys\nfrom fedtiny import cli\ntry:\n    cli.main(['client', '--help'])\nexcept SystemExit:\n    pass\n"
            "import fedtiny.flower.fleet\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'grpc')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_weight_above_max_samples_is_refused_per_device_and_per_fleet_device(caplog):
    s = FedtinyFedAvg(MODEL, max_samples=100)
    msg = _train_msg(s, s.model.init(0))
    zero = np.zeros(s.model.n_params, np.float32)
    replies = [_reply(msg, records.int8_reply(codec.encode(zero + 0.01), 101)),       # one device: too many
               _reply(msg, records.partial_sum_reply(zero, 301, 3)),                  # 3 devices: > 3 x 100
               _reply(msg, records.partial_sum_reply(zero + 1, 300, 3)),              # 3 devices: allowed
               _reply(msg, records.int8_reply(codec.encode(zero + 0.01), 100))]       # allowed
    _arrays, metrics = s.aggregate_train(1, replies)
    assert metrics["fedtiny.bad_reply"] == 2 and metrics["num-examples"] == 400
    assert "too_many_samples" in caplog.text
    with pytest.raises(ValueError, match="max samples"):
        FedtinyFedAvg(MODEL, max_samples=0)


def test_device_updates_are_clipped_to_the_norm_and_a_fleet_sum_is_not():
    s = FedtinyFedAvg(MODEL, clip_norm=0.5)
    m = s.model
    rng = np.random.default_rng(11)
    g = m.init(2)
    msg = _train_msg(s, g)
    u = codec.encode(rng.normal(0, 0.05, m.n_params).astype(np.float32), seed=1)     # norm ~2.5: clipped
    small = [t + 0.002 * rng.standard_normal(t.shape) for t in records.model_arrays(m, g).to_numpy_ndarrays()]
    partial = rng.normal(0, 3.0, m.n_params).astype(np.float32)                     # norm ~150: kept as is
    replies = [_reply(msg, records.int8_reply(u, 20)),
               _reply(msg, RecordDict({"arrays": ArrayRecord(small), "metrics": MetricRecord({"num-examples": 5})})),
               _reply(msg, records.partial_sum_reply(partial, 30, 2))]
    arrays, metrics = s.aggregate_train(1, replies)
    d_int8 = _decode64(u)
    d_small = np.concatenate([a.reshape(-1) for a in small]) - g.astype(np.float64)
    assert np.linalg.norm(d_int8) > 1 and np.linalg.norm(d_small) < 0.5
    terms = [(20 * 0.5 / np.linalg.norm(d_int8) * d_int8, 20), (5 * d_small, 5), (partial.astype(np.float64), 30)]
    want = _oracle(g, terms)
    got = records.flat_params(m, arrays).astype(np.float64)
    mag = sum(np.abs(t) for t, _ in terms) / 55
    eps = np.finfo(np.float32).eps
    assert (np.abs(got - want) <= eps * (8 * mag + 2 * np.abs(want) + 2 * np.abs(g))).all()
    assert metrics["fedtiny.clipped"] == 1 and metrics["num-examples"] == 55
