"""Round logic: FedAvg weighting against hand-checked numbers and a float64 oracle, admission policies,
closing rules, chunked uploads, FedNova, server optimizers, sampling."""
import numpy as np
import pytest

from fedtiny import codec, rounds
from fedtiny.rounds import Server, sample_clients


def _server(n, **kw):
    return Server(np.zeros(n, dtype=np.float32), **kw)


def test_fedavg_weighting_is_exact_with_unequal_counts():
    # (1*[4,0,-8] + 3*[0,4,8]) / 4 = [1, 3, 4]: exact in float32
    srv = _server(3)
    rnd = srv.open_round([7, 9])
    assert rnd.submit(7, 1, np.array([4, 0, -8], np.float32), 1)
    assert rnd.submit(9, 1, np.array([0, 4, 8], np.float32), 3)
    assert rnd.should_close()
    res = srv.close_round()
    assert res.outcome == "applied" and res.closed_by == "all" and res.n_samples == 4
    assert srv.params.tolist() == [1.0, 3.0, 4.0]


def test_fedavg_weighting_int8_updates_exact():
    # max |delta| = 127 gives block scale 1, so int8 holds these integers exactly
    d1 = np.array([127, 0, -127, 1], np.float32)
    d2 = np.array([-127, 127, 0, 3], np.float32)
    srv = _server(4)
    rnd = srv.open_round([0, 1])
    rnd.submit(0, 1, codec.encode(d1), 1)
    rnd.submit(1, 1, codec.encode(d2), 3)
    srv.close_round()
    assert srv.params.tolist() == [-63.5, 95.25, -31.75, 2.5]


def test_fedavg_matches_float64_oracle_over_rounds():
    rng = np.random.default_rng(0)
    n = 1000
    srv = _server(n)
    oracle = np.zeros(n)
    for r in range(1, 4):
        rnd = srv.open_round(range(5))
        deltas = rng.standard_normal((5, n)).astype(np.float32)
        counts = rng.integers(1, 600, 5)
        for k in range(5):
            rnd.submit(k, r, deltas[k], counts[k])
        srv.close_round()
        oracle += (counts[:, None] * deltas.astype(np.float64)).sum(0) / counts.sum()
    np.testing.assert_allclose(srv.params, oracle, rtol=0, atol=1e-5)


def test_rejections_are_named_counted_and_harmless():
    srv = _server(3)
    rnd = srv.open_round([1, 2])
    d = np.ones(3, np.float32)
    assert rnd.submit(1, 1, d, 10).accepted
    v = rnd.submit(1, 1, d * 100, 10)
    assert v.reason == rounds.DUPLICATE and not v
    v = rnd.submit(2, 0, d * 100, 10)
    assert v.reason == rounds.WRONG_ROUND and "device 2 sent round 0" in v.detail
    assert rnd.submit(2, 2, d * 100, 10).reason == rounds.WRONG_ROUND  # from the future
    assert rnd.submit(5, 1, d * 100, 10).reason == rounds.NOT_SELECTED
    assert rnd.submit(2, 1, np.ones(4, np.float32), 10).reason == rounds.BAD_UPDATE
    assert rnd.submit(2, 1, np.full(3, np.nan, np.float32), 10).reason == rounds.BAD_UPDATE
    assert rnd.submit(2, 1, d, 0).reason == rounds.BAD_UPDATE
    assert not rnd.should_close(now=None)
    res = srv.close_round()
    assert rnd.submit(2, 1, d, 10).reason == rounds.ROUND_CLOSED
    assert res.stragglers == [2] and res.contributors == [1] and res.closed_by == "forced"
    assert res.rejected == {"duplicate": 1, "wrong_round": 2, "not_selected": 1, "bad_update": 3}
    assert srv.params.tolist() == [1.0, 1.0, 1.0]


def test_close_at_min_updates_and_at_deadline():
    srv = _server(2)
    rnd = srv.open_round(range(10), min_updates=3, deadline=100.0)
    for k in range(2):
        rnd.submit(k, 1, np.ones(2, np.float32), 1)
    assert not rnd.should_close(now=50.0)
    assert rnd.should_close(now=100.0)  # deadline: close with the 2 that answered
    rnd.submit(2, 1, np.ones(2, np.float32), 1)
    assert rnd.should_close(now=0.0)
    res = srv.close_round(now=0.0)
    assert res.closed_by == "min_updates" and res.stragglers == list(range(3, 10))


def test_round_below_quorum_is_abandoned_and_model_unchanged():
    srv = _server(2)
    srv.params[:] = [5, 6]
    rnd = srv.open_round([0, 1, 2], deadline=10.0, quorum=2)
    rnd.submit(0, 1, np.full(2, 100, np.float32), 1)
    assert rnd.should_close(now=10.0)
    res = srv.close_round(now=10.0)
    assert res.outcome == "abandoned" and res.closed_by == "deadline" and "quorum 2" in res.detail
    assert srv.params.tolist() == [5.0, 6.0]
    rnd = srv.open_round([0])  # the abandoned sum does not leak into the next round
    rnd.submit(0, 2, np.ones(2, np.float32), 1)
    srv.close_round()
    assert srv.params.tolist() == [6.0, 7.0]


def test_partial_sum_from_a_bridge_equals_its_devices():
    rng = np.random.default_rng(3)
    d = rng.standard_normal((3, 50)).astype(np.float32)
    direct = _server(50)
    rnd = direct.open_round([0, 1, 2])
    for k, nk in enumerate((2, 3, 5)):
        rnd.submit(k, 1, d[k], nk)
    direct.close_round()
    hier = _server(50)
    rnd = hier.open_round([0, 99])
    rnd.submit(0, 1, d[0], 2)
    bridge_mean = ((3 * d[1].astype(np.float64) + 5 * d[2]) / 8).astype(np.float32)
    assert rnd.submit_partial(99, 1, bridge_mean, 8, n_updates=2)
    hier.close_round()
    np.testing.assert_allclose(hier.params, direct.params, atol=1e-6)


def test_fednova_equal_steps_is_fedavg_and_unequal_matches_formula():
    rng = np.random.default_rng(4)
    d = rng.standard_normal((3, 20)).astype(np.float32)
    n = np.array([10.0, 30.0, 60.0])
    for steps, check_equal in (((4, 4, 4), True), ((1, 5, 20), False)):
        nova = _server(20, normalization="fednova")
        plain = _server(20)
        for srv in (nova, plain):
            rnd = srv.open_round(range(3))
            for k in range(3):
                rnd.submit(k, 1, d[k], n[k], steps=steps[k])
            srv.close_round()
        tau = np.array(steps, np.float64)
        p = n / n.sum()
        oracle = (p * tau).sum() * (p[:, None] * d / tau[:, None]).sum(0)
        np.testing.assert_allclose(nova.params, oracle, rtol=1e-5, atol=1e-6)
        if check_equal:
            np.testing.assert_allclose(nova.params, plain.params, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):  # FedNova needs the steps
        srv = _server(3, normalization="fednova")
        srv.open_round([0])._weight_of(0, 1, None, 0)


def _oracle_opt(name, deltas, **h):
    w = np.zeros(deltas.shape[1])
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for d in deltas:
        if name == "fedavgm":
            m = h["momentum"] * m + d
            w += h["lr"] * m
        else:
            m = h["beta1"] * m + (1 - h["beta1"]) * d
            v = h["beta2"] * v + (1 - h["beta2"]) * d * d
            w += h["lr"] * m / (np.sqrt(v) + h["tau"])
    return w


@pytest.mark.parametrize("name,hyper", [("fedavgm", dict(lr=0.5, momentum=0.9)),
                                        ("fedadam", dict(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3))])
def test_server_optimizers_match_numpy_oracle(name, hyper):
    rng = np.random.default_rng(5)
    deltas = rng.standard_normal((4, 2, 30)).astype(np.float32)
    srv = _server(30, optimizer=rounds.make_server_optimizer(name, **hyper))
    means = []
    for r in range(4):
        rnd = srv.open_round([0, 1])
        rnd.submit(0, r + 1, deltas[r, 0], 1)
        rnd.submit(1, r + 1, deltas[r, 1], 3)
        srv.close_round()
        means.append((deltas[r, 0].astype(np.float64) + 3 * deltas[r, 1]) / 4)
    np.testing.assert_allclose(srv.params, _oracle_opt(name, np.array(means), **hyper), rtol=1e-4, atol=1e-5)
    assert srv.optimizer.nbytes == (1 if name == "fedavgm" else 2) * 30 * 4


def test_server_optimizer_bad_arguments():
    with pytest.raises(ValueError, match="unknown server optimizer"):
        rounds.make_server_optimizer("sgd")
    with pytest.raises(ValueError, match="takes"):
        rounds.make_server_optimizer("fedavg", momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        rounds.make_server_optimizer("fedavgm", momentum=1.0)
    with pytest.raises(ValueError, match="tau"):
        rounds.make_server_optimizer("fedadam", tau=0)


def test_staleness_hook_accepts_recent_updates_with_their_weight():
    srv = _server(1)
    srv.open_round([0])
    srv.close_round()  # round 1 closed with nothing: abandoned
    rnd = srv.open_round(None, min_updates=2, max_staleness=1, staleness_weight=lambda s: 1.0 / (1 + s))
    assert rnd.submit(0, 2, np.array([4.0], np.float32), 2)   # fresh, weight 2
    assert rnd.submit(1, 1, np.array([1.0], np.float32), 4)   # one round stale, weight 4/2 = 2
    assert rnd.submit(2, 0, np.array([9.0], np.float32), 4).reason == rounds.WRONG_ROUND
    srv.close_round()
    assert srv.params.tolist() == [2.5]


def test_open_round_rules():
    srv = _server(2)
    with pytest.raises(ValueError, match="at least one"):
        srv.open_round([])
    with pytest.raises(ValueError, match="min_updates"):
        srv.open_round([1, 2], min_updates=3)
    srv.open_round([1])
    with pytest.raises(ValueError, match="still open"):
        srv.open_round([1])


def test_sample_clients_seeded_and_sized():
    a = sample_clients(100, 0.1, seed=3, round_id=7)
    assert a.tolist() == sample_clients(100, 0.1, seed=3, round_id=7).tolist()
    assert len(a) == 10 and len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100
    assert a.tolist() != sample_clients(100, 0.1, seed=3, round_id=8).tolist()
    assert len(sample_clients(100, 0.29, seed=0, round_id=1)) == 29
    assert len(sample_clients(5, 0.01, seed=0, round_id=1)) == 1
    assert set(sample_clients([3, 30, 300], 1.0, seed=0, round_id=1).tolist()) == {3, 30, 300}
    # over many rounds every client gets picked about equally often
    counts = np.bincount(np.concatenate([sample_clients(20, 0.25, seed=1, round_id=r) for r in range(2000)]), minlength=20)
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500
    with pytest.raises(ValueError, match="fraction"):
        sample_clients(10, 0.0, seed=0, round_id=1)
