"""FedtinyFedAvg: Flower's FedAvg (Message API) whose aggregation is fedtiny's in-place Accumulator.

One float32 sum of model size whatever the number of replies. Each valid reply is added as it is
read, weighted by its "num-examples" n_k (records.py has the layout):
  - a fedtiny device's int8 update: dequantized and added in one C pass (never a float copy);
  - a fedtiny fleet's partial sum sum n_k delta_k with its total weight: added as is;
  - an ordinary Flower client's new weights w_k: added as the delta w_k - w_global.
w_{t+1} = w_t + sum / sum n_k, i.e. sum n_k w_k / sum n_k over every device behind every reply.
Bounds (fedtiny.bounds, the aggregator's defaults): n_k a whole number in [1, max_samples] (a
fleet: times its devices); a device's update (int8 or w_k - w_t) scaled down to L2 norm
clip_norm, counted as "fedtiny.clipped"; a fleet's sum is not clipped again (it clipped each of
its devices). Policies: a reply that fails a check (no weight, a weight out of bounds, a wrong
shape, corrupt int8 blocks, NaN) is
dropped, logged with its reason and counted in the round's metrics ("fedtiny.rejected"); with no
valid reply the model stays as it was (Flower's convention: aggregate_train returns None).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .. import bounds, model as model_mod
from ..fedavg import Accumulator
from . import records

log = logging.getLogger("fedtiny.flower")


class FedtinyFedAvg(FedAvg):
    """FedAvg over fedtiny int8 updates, fleet partial sums and ordinary float weights."""

    def __init__(self, model: str, *, lr: float = 0.05, epochs: int = 1, batch_size: int = 10,
                 codec: str = "int8-stochastic", seed: int = 0, fraction_train: float = 1.0,
                 fraction_evaluate: float = 0.0, min_train_nodes: int = 2, min_evaluate_nodes: int = 2,
                 min_available_nodes: int = 2, max_samples: int | None = bounds.DEFAULT_MAX_SAMPLES,
                 clip_norm: float | None = bounds.DEFAULT_CLIP_NORM,
                 on_reply: Callable[[int, Message], None] | None = None) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
                         min_available_nodes=min_available_nodes)
        self.model = model_mod.build(model)
        self.train_config = {"fedtiny-model": model, "lr": float(lr), "epochs": int(epochs),
                             "batch-size": int(batch_size), "codec": codec, "seed": int(seed)}
        self.accumulator = Accumulator(self.model.n_params)
        self._global: np.ndarray | None = None   # w_t of the round being trained
        self.on_reply = on_reply                 # sees every reply before aggregation (audit, tests)
        # the same bounds as `fedtiny aggregate`: a device counts alike behind a fleet or straight here
        self.bounds = bounds.Bounds(max_samples=max_samples, clip_norm=clip_norm)
        self.last_counts: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = records.flat_params(self.model, arrays)
        for k, v in self.train_config.items():
            config[k] = v
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config["fedtiny-model"] = self.train_config["fedtiny-model"]
        return super().configure_evaluate(server_round, arrays, config, grid)

    def _check_weight(self, kind: str, weight: float, msg: Message) -> None:
        """n_k within the bounds (a fleet: per device of its sum), or ValueError with the reason."""
        devices = 1
        if kind == records.PARTIAL_SUM:
            devices = max(1, int(msg.content.metric_records[records.METRICS].get("fedtiny.updates", 1)))
        problem = self.bounds.check_samples(weight, devices=devices)
        if problem is not None:
            raise ValueError(problem)

    def _clip(self, update) -> float:
        """min(1, C / ||update||): one device's update scaled to the clip norm (fedtiny.bounds)."""
        factor = bounds.clip_factor(bounds.update_norm(update), self.bounds.clip_norm)
        if factor < 1.0:
            self._counts[bounds.CLIPPED] += 1
        return factor

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise ValueError("aggregate_train before configure_train: the round's global model is unknown")
        acc = self.accumulator
        acc.reset()
        counts: Counter[str] = Counter()
        self._counts = counts
        loss_sum = loss_weight = 0.0
        devices = 0
        for msg in replies:
            if self.on_reply is not None:
                self.on_reply(server_round, msg)
            node = msg.metadata.src_node_id
            if msg.has_error():
                counts["error_reply"] += 1
                log.warning("round %d: node %d replied with an error: %s", server_round, node, msg.error.reason)
                continue
            try:
                kind, payload, weight = records.read_reply(self.model, msg.content)
                self._check_weight(kind, weight, msg)
                if kind == records.INT8:
                    acc.add(payload, weight, self._clip(payload))
                    devices += 1
                elif kind == records.PARTIAL_SUM:
                    updates = msg.content.metric_records[records.METRICS].get("fedtiny.updates", 1)
                    acc.add_sum(payload, weight, max(1, int(updates)))
                    devices += max(1, int(updates))
                else:
                    delta = payload - self._global
                    acc.add(delta, weight, self._clip(delta))
                    devices += 1
            except ValueError as exc:
                counts["bad_reply"] += 1
                log.warning("round %d: reply of node %d dropped: %s", server_round, node, exc)
                continue
            counts[kind] += 1
            loss = msg.content.metric_records[records.METRICS].get("train-loss")
            if isinstance(loss, (int, float)) and math.isfinite(loss):
                loss_sum += weight * float(loss)
                loss_weight += weight
        self.last_counts = counts
        if acc.count == 0:
            log.warning("round %d: no valid reply; the model is unchanged", server_round)
            return None, None
        total = acc.total_weight
        new = self._global.copy()
        acc.apply(new)      # w += sum n_k delta_k / sum n_k, one C pass
        metrics = {records.WEIGHT: total, "fedtiny.devices": devices,
                   **{f"fedtiny.{k}": v for k, v in sorted(counts.items())}}
        if loss_weight > 0:
            metrics["train-loss"] = loss_sum / loss_weight
        return records.model_arrays(self.model, new), MetricRecord(metrics)
