"""fedtiny's central DP against Flower's DifferentialPrivacyServerSideFixedClipping at equal z.

The same setting as bench/dp_utility.py (Fashion-MNIST, `2nn`, 1,000 iid devices, clip 0.5),
with fixed-size sampling of 100 per round, because that is what Flower's strategy samples. Both
sides train with fedtiny's engine on the same devices with the same seeds (fedtiny.simulate's);
only the server step differs: Flower's wrapper (flwr 1.42) clips each update, FedAvg averages by
num_examples (54 for every device here, so uniform), and adds N(0, (z C / m)^2) to the mean;
fedtiny clips, sums with weight 1, adds N(0, (z C)^2) to the sum and divides by m. The driver
calls Flower's aggregate_fit directly (no Flower transport or simulation engine) and sets the
round's global parameters as configure_fit would.

    python bench/dp_flower.py Z ROUNDS SEED      # prints both final accuracies (needs flwr)
"""
from __future__ import annotations

import sys
import time

import numpy as np


def flower_run(z: float, rounds_: int, seed: int, clip: float = 0.5) -> float:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    from fedtiny import datasets, model as model_mod, rounds, train
    from fedtiny.seeds import derive_seed

    data = datasets.load("fashion-mnist", None, seed=seed)
    model = model_mod.build("2nn")
    splits = datasets.partition(data.y_train, 1000, "iid", alpha=0.5, shards_per_client=2, holdout=0.1, seed=seed)
    params = model.init(seed)
    strategy = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=z, clipping_norm=clip,
                                                          num_sampled_clients=100)
    for r in range(1, rounds_ + 1):
        selected = rounds.sample_clients(1000, 0.1, seed=seed, round_id=r)
        strategy.current_round_params = [params.copy()]  # what configure_fit records
        results = []
        for k in selected.tolist():
            part = splits[k]
            local = params.copy()
            train.local_sgd(model, local, data.x_train[part.train], data.y_train[part.train], epochs=1,
                            batch_size=10, lr=0.05, seed=derive_seed(seed, r, k, 1))
            results.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([local]), part.n_samples, {})))
        agg, _ = strategy.aggregate_fit(r, results, [])
        params = parameters_to_ndarrays(agg)[0].astype(np.float32)
    return float(train.evaluate(model, params, data.x_test, data.y_test)[1])


def fedtiny_run(z: float, rounds_: int, seed: int, clip: float = 0.5) -> float:
    from fedtiny import simulate
    cfg = simulate.SimConfig(dataset="fashion-mnist", model="2nn", clients=1000, fraction=0.1, rounds=rounds_,
                             epochs=1, batch=10, lr=0.05, seed=seed, eval_every=rounds_, dp="central",
                             clip_norm=clip, noise_multiplier=z, dp_sampling="fixed")
    return float(simulate.run(cfg).summary["final_test_acc"])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    z, t, seed = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for name, fn in (("fedtiny central", fedtiny_run), ("flower DifferentialPrivacyServerSideFixedClipping", flower_run)):
        t0 = time.perf_counter()
        print(f"{name}: z = {z}, {t} rounds, seed {seed}: final test accuracy {fn(z, t, seed):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
