"""Simulated devices (fedtiny.clock): speeds log-uniform with the asked spread, on/off traces with the
asked means and stationary share, finish times against a brute-force integration, CSV traces."""
import math

import numpy as np
import pytest

from fedtiny import clock


def test_speeds_log_uniform_with_the_spread_asked_and_seeded():
    s = clock.device_speeds(2000, seed=4, speed_min=2.0, spread=10.0)
    assert s.min() >= 2.0 and s.max() <= 20.0
    assert s.max() / s.min() > 9.5                       # 2000 draws cover the range
    u = np.log(s / 2.0) / math.log(10.0)                 # uniform on [0, 1] if log-uniform
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 1 / 12) < 0.01
    assert np.array_equal(s, clock.device_speeds(2000, seed=4, speed_min=2.0, spread=10.0))
    assert not np.array_equal(s, clock.device_speeds(2000, seed=5, speed_min=2.0, spread=10.0))
    assert np.all(clock.device_speeds(5, seed=0, speed_min=3.0, spread=1.0) == 3.0)
    with pytest.raises(ValueError, match="--speed-spread"):
        clock.device_speeds(5, seed=0, spread=0.5)
    with pytest.raises(ValueError, match="--speed-min"):
        clock.device_speeds(5, seed=0, speed_min=0)


def test_markov_trace_has_the_asked_means_and_share():
    a = clock.Availability.markov(200, seed=1, on_mean=60.0, off_mean=30.0)
    horizon = 20_000.0
    on_time, periods = 0.0, []
    for k in range(200):
        a.is_on(k, horizon)  # generate up to the horizon
        for s0, e in zip(a._starts[k], a._ends[k]):
            if e < horizon:
                periods.append(e - s0)
            on_time += min(e, horizon) - min(s0, horizon)
    assert on_time / (200 * horizon) == pytest.approx(2 / 3, abs=0.02)
    assert np.mean(periods) == pytest.approx(60.0, rel=0.05)
    assert a.share_on(0.0, 1.0) == pytest.approx(2 / 3, abs=0.1)   # stationary from t = 0
    b = clock.Availability.markov(200, seed=1, on_mean=60.0, off_mean=30.0)
    assert [b.is_on(k, 777.0) for k in range(200)] == [a.is_on(k, 777.0) for k in range(200)]


def _on_time_between(a, k, t0, t1):
    return sum(max(0.0, min(e, t1) - max(s0, t0)) for s0, e in zip(a._starts[k], a._ends[k]))


def test_finish_time_is_when_on_time_adds_up():
    a = clock.Availability.markov(20, seed=3, on_mean=50.0, off_mean=80.0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        k, t, work = int(rng.integers(20)), float(rng.uniform(0, 5000)), float(rng.exponential(200))
        f = a.finish(k, t, work)
        assert f >= t + work
        assert _on_time_between(a, k, t, f) == pytest.approx(work, abs=1e-6)
        assert a.is_on(k, f - 1e-9)          # it finishes while on
        n = a.next_on(k, t)
        assert n >= t and a.is_on(k, n) and (n == t or not a.is_on(k, (t + n) / 2))


def test_always_on():
    a = clock.Availability.always(3)
    assert a.on_now(1e9) == [0, 1, 2] and a.finish(1, 5.0, 10.0) == 15.0 and a.next_on(2, 7.0) == 7.0


def test_csv_trace(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text("device,start_s,end_s\n0,10,20\n0,0,5\n2,3,4\n")
    a = clock.Availability.from_csv(str(p), 3)
    assert a.is_on(0, 2) and not a.is_on(0, 7) and a.is_on(0, 10) and not a.is_on(0, 20)
    assert a.finish(0, 0.0, 8.0) == 13.0               # 5 s in [0, 5), 3 more from 10
    assert a.finish(0, 0.0, 16.0) == math.inf            # the trace ends first
    assert a.on_now(3.5) == [0, 2] and a.next_on(1, 0.0) == math.inf  # device 1 has no line: never on


@pytest.mark.parametrize("text,needle", [
    ("0,1\n", "want device,start_s,end_s, got 2 fields"),
    ("0,a,2\n", "as numbers"),
    ("5,0,1\n", "outside 0..2"),
    ("0,3,1\n", "0 <= start_s < end_s"),
    ("0,0,5\n0,4,6\n", "overlap"),
    ("# nothing\n", "no interval"),
])
def test_csv_trace_errors_name_the_line(tmp_path, text, needle):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=needle):
        clock.Availability.from_csv(str(p), 3)


def test_speeds_by_key_hands_the_same_speeds_out_in_key_order():
    from fedtiny.seeds import derive_seed
    s = clock.device_speeds(300, seed=3, speed_min=1.0, spread=10.0)
    key = np.random.default_rng(11).integers(0, 10, 300)
    out = clock.speeds_by_key(s, key, seed=3)
    assert sorted(out.tolist()) == sorted(s.tolist())                    # the same fleet of speeds
    # independent recomputation: devices sorted by (key, the documented tie draw), slowest first
    tie = np.random.default_rng(derive_seed(3, 0x5BEED, 1)).random(300)
    ranked = sorted(range(300), key=lambda k: (key[k], tie[k]))
    ref = np.empty(300)
    for rank, k in enumerate(ranked):
        ref[k] = sorted(s.tolist())[rank]
    assert np.array_equal(out, ref)
    for a in range(300):                                                 # a smaller key is never faster
        assert np.all(out[key > key[a]] >= out[a])
    assert np.array_equal(out, clock.speeds_by_key(s, key, seed=3))
    assert not np.array_equal(out, clock.speeds_by_key(s, key, seed=4))  # ties drawn from the seed
    with pytest.raises(ValueError, match="one key per device"):
        clock.speeds_by_key(s, key[:5], seed=3)
