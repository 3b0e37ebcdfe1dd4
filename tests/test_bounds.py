"""Bounds on one device's influence (fedtiny.bounds, the round logic): clipping, the sample cap,
the refused non-finite step, a bridge's partial sum, and `fedtiny simulate` with the same bounds.
The norm kernel itself: tests/test_norm.py."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fedtiny import bounds, codec, rounds
from fedtiny.bounds import Bounds
from test_norm import _random_blocks



def test_clip_factor_and_scaled_weight_never_exceed_the_bound():
    assert bounds.clip_factor(0.5, 1.0) == 1.0
    assert bounds.clip_factor(4.0, 1.0) == 0.25
    assert bounds.clip_factor(4.0, None) == 1.0
    assert bounds.clip_factor(math.inf, 1.0) == 0.0
    for w, f in ((600, 1 / 3), (1, 1e-44), (65535, 0.1), (7, 2.0 ** -140)):
        s = bounds.scaled_weight(w, f)
        assert s <= w * f and s == float(np.float32(s))


def _server(n, **kw):
    return rounds.Server(np.zeros(n, np.float32), **kw)


def test_a_clipped_update_enters_the_mean_with_norm_at_most_the_bound(rng):
    n = 300
    honest = rng.standard_normal((3, n)).astype(np.float32) * 0.01
    attack = -10 * honest[0] * 1000
    srv = _server(n, bounds=Bounds(max_samples=1000, clip_norm=1.0))
    rnd = srv.open_round([0, 1, 2, 3])
    for k in range(3):
        assert rnd.submit(k, 1, codec.encode(honest[k]), 100).detail == ""
    v = rnd.submit(3, 1, codec.encode(attack), 100)
    assert v.accepted and v.detail.startswith("clipped")
    res = srv.close_round()
    assert res.outcome == "applied" and res.rejected["clipped"] == 1
    # oracle: float64 mean with the attack scaled to norm 1
    dec = [codec.encode(h).decode().astype(np.float64) for h in honest]
    a = codec.encode(attack).decode().astype(np.float64)
    a *= 1.0 / np.linalg.norm(a)
    np.testing.assert_allclose(srv.params, (sum(dec) + a) / 4, atol=1e-6)


def test_sample_count_above_the_cap_or_not_whole_is_refused_and_counted():
    srv = _server(4, bounds=Bounds(max_samples=1000, clip_norm=None))
    rnd = srv.open_round([0, 1, 2])
    d = np.ones(4, np.float32)
    v = rnd.submit(0, 1, d, 2**32 - 1)
    assert v.reason == bounds.TOO_MANY_SAMPLES and "--max-samples 1000" in v.detail
    assert rnd.submit(1, 1, d, 10.5).reason == bounds.BAD_SAMPLES
    assert rnd.submit(2, 1, d, 1000).accepted
    res = srv.close_round()
    assert res.rejected == {"too_many_samples": 1, "bad_samples": 1}
    np.testing.assert_array_equal(srv.params, d)      # only the honest one


@pytest.mark.parametrize("opt", ["fedavg", "fedavgm", "fedadam"])
def test_a_step_that_would_make_the_model_nonfinite_is_refused_and_nothing_changes(opt):
    n = 256
    start = np.full(n, 3e38, np.float32)              # near FLT_MAX: one more step overflows
    srv = rounds.Server(start.copy(), optimizer=rounds.make_server_optimizer(opt, lr=1.0))
    rnd = srv.open_round([0])
    assert rnd.submit(0, 1, np.full(n, 1e38, np.float32), 1).accepted  # the sum is finite, the step is not
    res = srv.close_round()
    assert res.outcome == "abandoned" and res.rejected["nonfinite_step"] == 1
    assert "nonfinite_step" in res.detail
    np.testing.assert_array_equal(srv.params, start)
    assert all(np.isfinite(v).all() for v in srv.optimizer.state().values())
    assert srv.optimizer.state() == {}                # the refused step left no state behind
    rnd = srv.open_round([0])                         # and the next round works
    assert rnd.submit(0, 2, np.full(n, -1.0, np.float32), 1).accepted
    assert srv.close_round().outcome == "applied" and np.isfinite(srv.params).all()


def test_maximal_scales_from_one_device_cannot_make_the_model_nonfinite(rng):
    """The observed attack: every block scale FLT_MAX/127 and q = +-127, summed with honest updates."""
    n = 1000
    srv = _server(n, bounds=Bounds())
    rnd = srv.open_round([0, 1])
    assert rnd.submit(0, 1, codec.encode(rng.standard_normal(n).astype(np.float32) * 0.01), 600).accepted
    blocks = _random_blocks(rng, n, max_scale=True)
    blocks["q"] = 127
    u = codec.Int8Update.from_bytes(codec.HEADER.pack(codec.MAGIC, codec.VERSION, 0, codec.QK, n, 0) + blocks.tobytes())
    assert bounds.update_norm(u) > 1e38
    assert rnd.submit(1, 1, u, 600).accepted
    assert srv.close_round().outcome == "applied"
    assert np.isfinite(srv.params).all() and np.linalg.norm(srv.params) <= 1.0


def test_a_bridge_partial_sum_is_capped_per_device_it_holds():
    srv = _server(4, bounds=Bounds(max_samples=100, clip_norm=None))
    rnd = srv.open_round([7, 8])
    d = np.ones(4, np.float32)
    assert rnd.submit_partial(7, 1, d, 300, n_updates=3).accepted          # 3 devices of 100
    v = rnd.submit_partial(8, 1, d, 301, n_updates=3)
    assert v.reason == bounds.TOO_MANY_SAMPLES and "--max-samples 100 x 3 devices" in v.detail


def test_simulate_takes_the_same_bounds_and_refuses_an_impossible_cap(tmp_path):
    base = ["simulate", "--dataset", "digits", "--model", "mlp:64-32-10", "--clients", "4", "--fraction", "1",
            "--rounds", "2", "--quiet", "--holdout", "0"]
    r = subprocess.run([sys.executable, "-m", "fedtiny.cli", *base, "--max-samples", "100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fedtiny simulate: error: --max-samples 100: client 0 holds 360 training samples and would be refused "
        "every round; raise --max-samples or use more --clients"], r.stderr
    r = subprocess.run([sys.executable, "-m", "fedtiny.cli", *base, "--clip-norm", "0.5", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "result.json").read_text())["rounds"]
    assert len(rows) == 2 and all(np.isfinite(row["test_acc"]) for row in rows)
    assert rows[0]["clipped"] == 4      # digits updates of round 1 have norms near 0.9 (docs/network.md)
