"""`fedtiny aggregate --mode async` (FedBuff over UDP, fedtiny/net/buffered.py) with real
`fedtiny client` processes on 127.0.0.1: clients killed with -9 and restarted mid-run, the
aggregator killed with -9 and restarted from its --state, one device so slow that its updates
are (nearly always) too stale.

Oracle: the round logic replayed (fedtiny.rounds.Server.open_buffer / submit, as `fedtiny
simulate --mode async` drives it) with the accepted (device, version, n_k) sequence the
aggregator recorded in its checkpoint, each update recomputed from the device's data and the
model of its version with the seeds `fedtiny simulate` uses: the final model must be equal bit
for bit. An update refused as too stale is not in that sequence, so had it reached the model the
two would differ."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fedtiny import bounds, codec, datasets, rounds, train
from fedtiny import model as model_mod
from fedtiny.net import keys, state
from fedtiny.net.demo import client_command
from fedtiny.seeds import derive_seed
from netutil import CLIENT_ENV, MODEL, free_udp_port, stop_all, wait_for

SEED = 3
EPOCHS = 10
FAST_SAMPLES, SLOW_SAMPLES = 10, 60000  # the slow device trains 6,000x the steps of a fast one (0.5 s and more; n_k under --max-samples)
K, M, S = 2, 4, 3


def _write_fleet(directory, n_fast: int):
    """Keys and one .npz per device: n_fast small ones, then one large one (the slow device)."""
    data = datasets.load("digits", None, seed=SEED)
    sizes = [FAST_SAMPLES] * n_fast + [SLOW_SAMPLES]
    paths = []
    for k, n in enumerate(sizes):
        path = os.path.join(directory, f"client{k}.npz")
        rows = np.arange(k * FAST_SAMPLES, k * FAST_SAMPLES + n) % len(data.y_train)   # the slow one: the set, repeated
        np.savez(path, x=data.x_train[rows], y=data.y_train[rows])
        paths.append(path)
    keyfile = os.path.join(directory, "keys")
    keys.write_keys(keyfile, keys.generate(range(len(sizes))))
    return keyfile, paths


def _aggregate_cmd(port, keyfile, state_dir, steps, *extra):
    return [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", f"127.0.0.1:{port}", "--model", MODEL,
            "--rounds", str(steps), "--keys", keyfile, "--state", state_dir, "--dataset", "digits",
            "--seed", str(SEED), "--epochs", str(EPOCHS), "--lr", "0.05", "--batch", "10", "--round-timeout", "20",
            "--mode", "async", "--buffer", str(K), "--concurrency", str(M), "--max-staleness", str(S), *extra]


def _steps_done(state_dir) -> int:
    try:
        ckpt = state.load(state_dir)
    except ValueError:
        return 0
    return 0 if ckpt is None else ckpt.round


def replay(metrics: list[dict], data_paths: list[str], *, staleness: str = "poly", k: int = K, s: int = S,
           **params) -> np.ndarray:
    """The round logic fed the recorded arrival order; each update recomputed as its device computes it
    (k, s: the run's --buffer and --max-staleness; params: exponent, hinge_at, hinge_slope)."""
    model = model_mod.build(MODEL)
    server = rounds.Server(model.init(SEED), optimizer="fedavg",
                           bounds=bounds.Bounds(max_samples=bounds.DEFAULT_MAX_SAMPLES, clip_norm=bounds.DEFAULT_CLIP_NORM))
    sfn = rounds.staleness_function(staleness, **params)
    versions = {1: server.params.copy()}          # tag -> the model a device offered that tag trains
    data = {}
    for row in metrics:
        rnd = server.open_buffer(k, max_staleness=s, staleness_weight=sfn)
        assert rnd.round_id == row["round"]
        for device, tag, n_k, steps in row["arrivals"]:
            if device not in data:
                with np.load(data_paths[device]) as z:
                    data[device] = (np.ascontiguousarray(z["x"], dtype=np.float32), z["y"].astype(np.int64))
            x, y = data[device]
            start = versions[tag]
            local = start.copy()
            res = train.local_sgd(model, local, x, y, epochs=EPOCHS, batch_size=10, lr=0.05,
                                  seed=derive_seed(SEED, tag, device, 1))
            local -= start
            update = codec.encode(local, rounding="stochastic", seed=derive_seed(SEED, tag, device, 2))
            assert (n_k, steps) == (len(y), res.steps)
            verdict = rnd.submit(device, tag, update, n_k, steps=res.steps)
            assert verdict.accepted, verdict
        assert rnd.should_close()
        assert server.close_round().outcome == "applied"
        versions[row["round"] + 1] = server.params.copy()
    return server.params


def test_async_loopback_with_kills_restarts_and_a_too_stale_device(tmp_path):
    n_fast, steps = 4, 72
    keyfile, paths = _write_fleet(str(tmp_path), n_fast)
    slow = n_fast
    state_dir = str(tmp_path / "state")
    port = free_udp_port()
    server = f"127.0.0.1:{port}"
    log_path = tmp_path / "aggregate.log"
    procs = []

    def start_aggregator():
        out = open(log_path, "a")
        # a weight other than the default: the aggregator's --staleness-exponent reaches its buffers
        p = subprocess.Popen(_aggregate_cmd(port, keyfile, state_dir, steps, "--staleness-exponent", "1"),
                             env=CLIENT_ENV, cwd=str(tmp_path),
                             stdout=out, stderr=subprocess.STDOUT, text=True)
        out.close()
        return p

    def start_client(k):
        return subprocess.Popen(client_command(server, k, keyfile, paths[k], MODEL), env=CLIENT_ENV, cwd=str(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    agg = start_aggregator()
    clients = {k: start_client(k) for k in range(n_fast + 1)}
    procs = [agg, *clients.values()]
    try:
        wait_for(lambda: _steps_done(state_dir) >= 6, 90, "6 server steps")
        for k in (0, 1):                       # two devices die mid-training ...
            clients[k].send_signal(signal.SIGKILL)
            clients[k].wait()
        wait_for(lambda: _steps_done(state_dir) >= 12, 90, "12 server steps with two devices gone")
        for k in (0, 1):                       # ... and come back (new processes, new sessions)
            clients[k] = start_client(k)
            procs.append(clients[k])
        wait_for(lambda: _steps_done(state_dir) >= 24, 90, "24 server steps")
        agg.send_signal(signal.SIGKILL)        # the aggregator dies; restarted on the same --state
        agg.wait()
        agg = start_aggregator()
        procs.append(agg)
        assert agg.wait(timeout=180) == 0, log_path.read_text()[-3000:]
    finally:
        stop_all(procs)
    ckpt = state.load(state_dir)
    assert ckpt.round == steps
    rows = ckpt.metrics
    assert [r["round"] for r in rows] == list(range(1, steps + 1))
    log_text = log_path.read_text()
    assert "epoch 2" in log_text, log_text[-2000:]          # the second life resumed the run
    arrivals = [a for r in rows for a in r["arrivals"]]
    assert all(len(r["arrivals"]) == K for r in rows)
    taus = [r["round"] - tag for r in rows for _, tag, _, _ in r["arrivals"]]
    assert max(taus) <= S and min(taus) >= 0
    assert max(taus) >= 1                      # stale updates were weighted down, not only fresh ones
    assert all(r["in_flight_max"] <= M for r in rows)
    assert {d for d, *_ in arrivals} >= {0, 1, 2, 3}
    # the slow device: refused as too stale (told, then offered the current model again)
    assert sum(r["rejected_stale"] for r in rows) >= 1
    assert sum(r["rejected"].get("too_stale", 0) for r in rows) >= 1
    # the final model: the round logic replayed with the recorded arrival order, bit for bit
    expected = replay(rows, paths, exponent=1.0)
    np.testing.assert_array_equal(ckpt.weights, expected)
    assert not np.array_equal(expected, replay(rows, paths))   # and the exponent mattered
    assert not np.array_equal(ckpt.weights, model_mod.build(MODEL).init(SEED))
    del slow


@pytest.mark.parametrize("args, words", [
    (["--buffer", "5"], "--buffer needs --mode async"),
    (["--mode", "async", "--concurrency", "0"], "--concurrency must be >= 1"),
    (["--mode", "async", "--buffer", "0"], "--buffer must be >= 1"),
    (["--mode", "async", "--max-staleness", "-1"], "--max-staleness must be >= 0"),
    (["--mode", "async", "--concurrency", "8", "--slots", "4"], "--slots 4 is less than --concurrency 8"),
    (["--mode", "async", "--staleness", "linear"], "invalid choice: 'linear'"),
    (["--staleness-exponent", "1"], "--staleness-exponent needs --mode async"),
    (["--mode", "async", "--staleness", "const", "--staleness-exponent", "1"],
     "--staleness-exponent applies to --staleness poly"),
    (["--mode", "async", "--staleness", "hinge", "--hinge-slope", "0"], "hinge slope must be a positive number"),
    (["--mode", "later"], "invalid choice: 'later'"),
    (["--mode", "async", "--down-codec", "int8"], "--down-codec int8 needs --mode sync"),
    (["--mode", "async", "--secagg"], "--secagg needs synchronous rounds"),
    (["--mode", "async", "--dp", "central", "--noise-multiplier", "1"], "--dp central needs synchronous rounds"),
])
def test_bad_async_flags_one_line_exit_2(tmp_path, args, words):
    keyfile = os.path.join(tmp_path, "keys")
    keys.write_keys(keyfile, keys.generate(range(2)))
    cmd = [sys.executable, "-m", "fedtiny.cli", "aggregate", "--listen", "127.0.0.1:0", "--keys", keyfile,
           "--state", str(tmp_path / "state"), "--dataset", "none", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=CLIENT_ENV)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], p.stderr
    assert not os.path.exists(tmp_path / "state" / "state.json")
