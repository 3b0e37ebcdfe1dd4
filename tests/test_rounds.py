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


# --- asynchronous buffers (FedBuff) -----------------------------------------------------------

@pytest.mark.parametrize("kind,kw,formula", [
    ("const", {}, lambda t: 1.0),
    ("poly", {}, lambda t: 1.0 / np.sqrt(1.0 + t)),
    ("poly", {"exponent": 1.0}, lambda t: 1.0 / (1.0 + t)),
    ("poly", {"exponent": 0.0}, lambda t: 1.0),
    ("hinge", {}, lambda t: 1.0 if t <= 4 else 1.0 / (t - 4 + 1.0)),
    ("hinge", {"hinge_at": 2, "hinge_slope": 10.0}, lambda t: 1.0 if t <= 2 else 1.0 / (10.0 * (t - 2) + 1.0)),
])
def test_staleness_functions_match_their_formulas(kind, kw, formula):
    s = rounds.staleness_function(kind, **kw)
    for tau in range(0, 40):
        assert s(tau) == pytest.approx(formula(tau), rel=1e-15, abs=0)
        assert 0 < s(tau) <= 1


@pytest.mark.parametrize("kind,kw,needle", [
    ("poly", {"exponent": -1}, "exponent"), ("poly", {"exponent": float("nan")}, "exponent"),
    ("hinge", {"hinge_at": -1}, "hinge point"), ("hinge", {"hinge_slope": 0}, "hinge slope"),
    ("linear", {}, "unknown staleness"),
])
def test_staleness_function_bad_arguments(kind, kw, needle):
    with pytest.raises(ValueError, match=needle):
        rounds.staleness_function(kind, **kw)


def _fedbuff_reference(params0, arrivals, K, S, s, opt, lr, beta=0.9):
    """Float64 FedBuff: accepted while 0 <= tau <= S, sum n s(tau) delta / sum n every K accepted,
    then w += lr * mean (fedavg) or v = beta v + mean, w += lr v (fedavgm). Returns params, verdicts."""
    w = params0.astype(np.float64)
    v = np.zeros_like(w)
    acc, den, count, rid = np.zeros_like(w), 0.0, 0, 1
    seen, verdicts = set(), []
    for device, tag, delta, n in arrivals:
        tau = rid - tag
        if tau > S:
            verdicts.append(rounds.TOO_STALE)
            continue
        if tau < 0:
            verdicts.append(rounds.WRONG_ROUND)
            continue
        if (device, tag) in seen:
            verdicts.append(rounds.DUPLICATE)
            continue
        seen.add((device, tag))
        acc += n * s(tau) * delta.astype(np.float64)
        den += n
        count += 1
        verdicts.append(rounds.ACCEPTED)
        if count == K:
            mean = acc / den
            if opt == "fedavgm":
                v = beta * v + mean
                w += lr * v
            else:
                w += lr * mean
            acc, den, count, rid, seen = np.zeros_like(w), 0.0, 0, rid + 1, set()
    return w, verdicts


@pytest.mark.parametrize("opt,lr,kind", [("fedavg", 1.0, "poly"), ("fedavg", 1.5, "hinge"), ("fedavgm", 0.5, "poly"),
                                          ("fedavg", 1.0, "const")])
def test_fedbuff_matches_float64_reference(opt, lr, kind):
    rng = np.random.default_rng(7)
    n_params, K, S = 257, 4, 3
    s = rounds.staleness_function(kind, hinge_at=1) if kind == "hinge" else rounds.staleness_function(kind)
    params0 = rng.normal(size=n_params).astype(np.float32)
    srv = Server(params0.copy(), optimizer=rounds.make_server_optimizer(opt, lr=lr))
    rnd = srv.open_buffer(K, max_staleness=S, staleness_weight=s)
    arrivals, verdicts = [], []
    for i in range(120):
        # tags from the current round back to S + 2 rounds stale, now and then a future one or a repeat
        tag = rnd.round_id - int(rng.integers(-1 if i % 17 == 0 else 0, S + 3))
        device = int(rng.integers(0, 6))
        delta = rng.normal(scale=0.1, size=n_params).astype(np.float32)
        n = int(rng.integers(1, 600))
        arrivals.append((device, tag, delta, n))
        verdicts.append(rnd.submit(device, tag, delta, n).reason)
        if rnd.should_close():
            assert srv.close_round().outcome == "applied"
            rnd = srv.open_buffer(K, max_staleness=S, staleness_weight=s)
    ref, ref_verdicts = _fedbuff_reference(params0, arrivals, K, S, s, opt, lr)
    assert verdicts == ref_verdicts
    assert {rounds.ACCEPTED, rounds.TOO_STALE, rounds.WRONG_ROUND, rounds.DUPLICATE} <= set(verdicts)
    assert srv.round_id > 15
    np.testing.assert_allclose(srv.params, ref, rtol=0, atol=2e-5)


def _decoded64(upd):
    """The int8 update's values in float64 from its blocks (scale * q), not through the C decoder."""
    n = len(upd)
    return upd.values.astype(np.float64) * upd.scales.astype(np.float64)[np.arange(n) // codec.QK]


def test_fedbuff_int8_updates_match_float64_reference_of_decoded_values():
    rng = np.random.default_rng(3)
    n, K, S = 300, 3, 2
    s = rounds.staleness_function("poly")
    srv = Server(np.zeros(n, np.float32))
    rnd = srv.open_buffer(K, max_staleness=S, staleness_weight=s)
    arrivals = []
    for i in range(30):
        tag = rnd.round_id - int(rng.integers(0, S + 2))
        upd = codec.encode(rng.normal(size=n).astype(np.float32))
        arrivals.append((i, tag, _decoded64(upd), 10 + i))
        rnd.submit(i, tag, upd, 10 + i)
        if rnd.should_close():
            srv.close_round()
            rnd = srv.open_buffer(K, max_staleness=S, staleness_weight=s)
    ref, _ = _fedbuff_reference(np.zeros(n, np.float32), arrivals, K, S, s, "fedavg", 1.0)
    np.testing.assert_allclose(srv.params, ref, rtol=0, atol=2e-5)


def test_update_older_than_max_staleness_never_reaches_the_model():
    srv = _server(3)
    for _ in range(5):  # five server steps of one fresh zero update each: round 6 is open after them
        rnd = srv.open_buffer(1, max_staleness=2)
        assert rnd.submit(0, rnd.round_id, np.zeros(3, np.float32), 1)
        srv.close_round()
    rnd = srv.open_buffer(2, max_staleness=2)
    poison = np.full(3, 1e30, np.float32)
    v = rnd.submit(1, rnd.round_id - 3, poison, 1)          # 3 steps old, max 2
    assert v.reason == rounds.TOO_STALE and "3 server steps old" in v.detail and not v.accepted
    assert rnd.submit(2, rnd.round_id + 1, poison, 1).reason == rounds.WRONG_ROUND  # not opened yet
    assert srv.accumulator.count == 0 and srv.accumulator.total_weight == 0
    assert rnd.submit(3, rnd.round_id - 2, np.array([3, 0, 0], np.float32), 1)      # oldest still accepted
    assert rnd.submit(4, rnd.round_id, np.array([0, 4, 0], np.float32), 3)
    res = srv.close_round()
    assert res.rejected == {rounds.TOO_STALE: 1, rounds.WRONG_ROUND: 1}
    # (1 * s(2) * 3 + 3 * s(0) * 4) / 4 with s(2) = 1/sqrt(3): the poison is nowhere
    np.testing.assert_allclose(srv.params, [3 / np.sqrt(3) / 4, 3.0, 0.0], rtol=1e-6)


def test_stale_update_moves_the_model_less_than_a_fresh_one():
    srv = _server(1)
    for _ in range(3):
        srv.open_buffer(1, max_staleness=5).submit(0, srv.round_id, np.zeros(1, np.float32), 1)
        srv.close_round()
    rnd = srv.open_buffer(1, max_staleness=5)                # round 4; a tag of 1 is 3 steps old
    assert rnd.submit(9, 1, np.array([1.0], np.float32), 7)
    srv.close_round()
    assert srv.params.tolist() == [0.5]                      # 1/sqrt(1+3), exact in float32


def test_buffer_takes_several_updates_of_one_device_from_different_versions():
    srv = _server(1)
    srv.open_buffer(1, max_staleness=3).submit(0, 1, np.zeros(1, np.float32), 1)
    srv.close_round()
    rnd = srv.open_buffer(3, max_staleness=3, staleness_weight=rounds.staleness_function("const"))
    assert rnd.submit(5, 1, np.array([1.0], np.float32), 1)
    assert rnd.submit(5, 2, np.array([2.0], np.float32), 1)
    assert rnd.submit(5, 2, np.array([9.0], np.float32), 1).reason == rounds.DUPLICATE
    assert not rnd.should_close()
    assert rnd.submit(6, 2, np.array([3.0], np.float32), 2)
    assert rnd.should_close()
    res = srv.close_round()
    assert res.contributors == [5, 5, 6] and res.closed_by == "min_updates"
    assert srv.params.tolist() == [(1 + 2 + 6) / 4]


def test_open_buffer_rules():
    srv = _server(2)
    with pytest.raises(ValueError, match="buffer size"):
        srv.open_buffer(0, max_staleness=1)
    with pytest.raises(ValueError, match="max_staleness"):
        srv.open_buffer(2, max_staleness=-1)
    with pytest.raises(ValueError, match="open membership"):
        srv.open_round([1], asynchronous=True)
    rnd = srv.open_buffer(2, max_staleness=1)
    with pytest.raises(ValueError, match="asynchronous"):
        rnd.submit_partial(1, 1, np.zeros(2, np.float32), 3)
    with pytest.raises(ValueError, match="synchronous"):
        rnd.submit_secure_mean([1, 2], 1, np.zeros(2, np.float32))
    bad = srv.current.submit(1, 1, np.zeros(2, np.float32), 1)
    assert bad.accepted  # the rejections above left no trace
    assert srv.nbytes == Server(np.zeros(2, np.float32)).nbytes  # no model-sized state beyond a sync server's


def test_fedbuff_weights_go_through_the_device_bounds():
    from fedtiny.bounds import Bounds
    srv = Server(np.zeros(2, np.float32), bounds=Bounds(max_samples=100, clip_norm=1.0))
    for _ in range(3):
        srv.open_buffer(1, max_staleness=5).submit(0, srv.round_id, np.zeros(2, np.float32), 1)
        srv.close_round()
    rnd = srv.open_buffer(2, max_staleness=5)                     # round 4
    assert rnd.submit(1, 4, np.zeros(2, np.float32), 101).reason == "too_many_samples"
    v = rnd.submit(2, 1, np.array([0.0, 4.0], np.float32), 50)    # 3 steps old (s = 1/2), norm 4 -> 1
    assert v.accepted and "clipped" in v.detail
    assert rnd.submit(3, 4, np.array([0.5, 0.0], np.float32), 50)  # fresh, under the bound
    res = srv.close_round()
    assert res.rejected == {"too_many_samples": 1, "clipped": 1}
    # (50 * 1/2 * 1/4 * [0, 4] + 50 * [0.5, 0]) / 100 = [0.25, 0.25]
    np.testing.assert_allclose(srv.params, [0.25, 0.25], rtol=1e-6)
