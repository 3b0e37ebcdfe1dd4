"""`fedtiny simulate`'s FedProx and personalization against references computed here, independently
of the engine: local training by tests/train_oracle.sgd_reference (numpy float64, the documented
update g + mu * (w - w_global)), FedAvg in float64, accuracy from train_oracle.forward. Each test
also shows that the quantity it checks moves by far more than its tolerance (so the test can fail):
FedProx switched off, or "after" evaluated on the global model, would not pass."""
import numpy as np
import pytest

import train_oracle as ref
from fedtiny import datasets, model as fm, simulate
from fedtiny.seeds import derive_seed
from fedtiny.simulate import SimConfig


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


def splits_of(cfg: SimConfig, data):
    # the partition itself is not under test here: the same function simulate calls
    return datasets.partition(data.y_train, cfg.clients, cfg.partition, alpha=cfg.alpha, shards_per_client=cfg.shards,
                              holdout=cfg.holdout, seed=cfg.seed)


def accuracy(m, params, x, y) -> float:
    return float(np.mean(ref.forward(m, params, x)[0].argmax(axis=1) == y))


def test_fedprox_round_is_fedavg_of_proximal_sgd(digits):
    cfg = SimConfig(dataset="digits", model="mlp:64-32-10", clients=3, fraction=1.0, rounds=1, epochs=2, batch=10,
                    lr=0.1, codec="float32", prox_mu=0.8, seed=4, test_limit=50)
    res = simulate.run(cfg, data=digits)
    m = fm.build(cfg.model)
    w0 = m.init(cfg.seed)
    splits = splits_of(cfg, digits)

    def fedavg(mu):
        num, den = 0.0, 0
        for k, part in enumerate(splits):
            x, y = digits.x_train[part.train], digits.y_train[part.train]
            wk = ref.sgd_reference(m, w0, x, y, epochs=cfg.epochs, batch_size=cfg.batch, lr=cfg.lr, prox_mu=mu,
                                   global_params=w0 if mu else None, seed=derive_seed(cfg.seed, 1, k, 1))
            num = num + part.n_samples * (wk - w0.astype(np.float64))
            den += part.n_samples
        return w0.astype(np.float64) + num / den

    want, without_prox = fedavg(cfg.prox_mu), fedavg(0.0)
    tol = 2e-5
    np.testing.assert_allclose(res.params, want, rtol=0, atol=tol)
    assert np.abs(without_prox - want).max() > 100 * tol   # plain FedAvg is far outside the tolerance


def test_personalization_after_is_independent_fine_tuning(digits):
    cfg = SimConfig(dataset="digits", model="mlp:64-32-10", clients=6, fraction=1.0, rounds=2, batch=10, lr=0.1,
                    codec="float32", partition="dirichlet", alpha=0.3, holdout=0.3, personalize=2,
                    personalize_clients=4, seed=1, test_limit=50)
    res = simulate.run(cfg, data=digits)
    p = res.personalization
    m = fm.build(cfg.model)
    splits = splits_of(cfg, digits)
    assert len(p["clients"]) == 4
    moved = 0
    for k, before, after in zip(p["clients"], p["before"], p["after"]):
        s = splits[k]
        xh, yh = digits.x_train[s.holdout], digits.y_train[s.holdout]
        one = 1.0 / len(yh)   # float32 vs float64 may flip one borderline argmax
        want_before = accuracy(m, res.params, xh, yh)
        tuned = ref.sgd_reference(m, res.params, digits.x_train[s.train], digits.y_train[s.train],
                                  epochs=cfg.personalize, batch_size=cfg.batch, lr=cfg.lr,
                                  seed=derive_seed(cfg.seed, 0x9E25, k))
        want_after = accuracy(m, tuned, xh, yh)
        assert before == pytest.approx(want_before, abs=one + 1e-12), k
        assert after == pytest.approx(want_after, abs=one + 1e-12), k
        moved += abs(want_after - want_before) > 2 * one + 1e-12
    assert moved >= 2   # fine-tuning changes accuracy by more than the tolerance on several clients
    np.testing.assert_allclose(p["after_summary"]["mean"], np.mean(p["after"]))
