"""SecAgg+ protocol costs (docs/secagg.md "Measured"), side by side in one run:

- device: one round's key generation, Shamir sharing + share encryption, and share decryption +
  pairwise key agreement + the fused clip/grid/mask pass of a 2nn delta (round of 10, k = 9),
  beside the same device's local training (1 epoch, 540 Fashion-MNIST-sized samples, batch 10)
  and its int8 encoding without SecAgg;
- aggregator: rebuilding the secrets and removing the masks for 100 devices (k = 40, t = 21)
  with 10 dropouts, beside adding 90 int8 updates to the FedAvg accumulator;
- a whole round of 10 devices in one process (training included): SecAgg+ against int8 FedAvg
  (the issue's target: SecAgg's round CPU <= 1.5x without).

    pytest bench/bench_secagg_protocol.py --benchmark-only --benchmark-timer=time.process_time \
        --benchmark-json=secagg_protocol.json

(process CPU time: on a shared machine wall time mostly measures the other jobs.)
    python bench/secagg_protocol_report.py secagg_protocol.json
"""
import numpy as np
import pytest

pytest.importorskip("cryptography")

from fedtiny import codec, model as model_mod, rounds, train  # noqa: E402
from fedtiny.fedavg import Accumulator  # noqa: E402
from fedtiny.privacy import inprocess, secagg  # noqa: E402
from fedtiny.privacy.secagg import Config, Device, ServerRound, Setup  # noqa: E402

MODEL = model_mod.build("2nn")
N = MODEL.n_params
W0 = MODEL.init(0)
RNG = np.random.default_rng(0)
# Fashion-MNIST-shaped data (the cost of SGD does not depend on the pixels); 540 samples as a client of the iid split
X = RNG.random((540, 784), dtype=np.float32)
Y = RNG.integers(0, 10, 540).astype(np.int32)
CONFIG = Config(clip=2.0)


def _delta(seed=0):
    w = W0.copy()
    train.local_sgd(MODEL, w, X, Y, epochs=1, batch_size=10, lr=0.05, seed=seed)
    return w - W0


DELTA = _delta()


def _info(benchmark, group, what):
    benchmark.group = group
    benchmark.extra_info.update({"what": what, "n_params": N})


def _round_until(stage, n=10):
    """A round of n devices driven until device 0 is about to do `stage` (others done)."""
    setup = Setup.create(1, range(n), CONFIG)
    server = ServerRound(setup, N)
    devs = {d: Device(d) for d in range(n)}
    for d in range(n):
        server.receive(devs[d].on_setup(setup))
    key_lists = server.advance()
    if stage == "shares":
        return devs[0], key_lists[0]
    for d, m in key_lists.items():
        server.receive(devs[d].on_key_list(m))
    return devs[0], server.advance()[0]


# --- device ----------------------------------------------------------------------------------------

def test_device_train(benchmark):
    _info(benchmark, "device", "local training, 1 epoch of 540 samples")
    w = W0.copy()
    benchmark(lambda: (w.__setitem__(slice(None), W0),
                       train.local_sgd(MODEL, w, X, Y, epochs=1, batch_size=10, lr=0.05, seed=1)))


def test_device_int8_encode(benchmark):
    _info(benchmark, "device", "int8 encode (no SecAgg)")
    benchmark(codec.encode, DELTA, rounding="stochastic", seed=3)


def test_device_secagg_keys(benchmark):
    _info(benchmark, "device", "SecAgg keys: 2 X25519 key pairs, commitment")
    setup = Setup.create(1, range(10), CONFIG)
    benchmark(lambda: Device(0).on_setup(setup))


def test_device_secagg_shares(benchmark):
    _info(benchmark, "device", "SecAgg sharing: Shamir of 2 secrets, 9 X25519 + HKDF + AEAD")
    benchmark.pedantic(lambda dev, msg: dev.on_key_list(msg), setup=lambda: (_round_until("shares"), {}),
                       rounds=20)


def test_device_secagg_mask(benchmark):
    _info(benchmark, "device", "SecAgg masking: 9 decryptions, 9 X25519 + HKDF, fused clip/grid/10 masks")

    def run(dev, msg):
        dev.on_share_list(msg)
        dev.masked_update(DELTA)

    benchmark.pedantic(run, setup=lambda: (_round_until("mask"), {}), rounds=20)


# --- aggregator ------------------------------------------------------------------------------------

def _unmask_stage(n=100, dropped=10):
    setup = Setup.create(1, range(n), CONFIG)
    server = ServerRound(setup, N)
    devs = {d: Device(d) for d in range(n)}
    drop = {d: "masked" for d in range(0, n, n // dropped)}
    for d in range(n):
        server.receive(devs[d].on_setup(setup))
    for d, m in server.advance().items():
        server.receive(devs[d].on_key_list(m))
    small = np.ascontiguousarray(DELTA[:N])
    for d, m in server.advance().items():
        devs[d].on_share_list(m)
        if d not in drop:
            server.receive(devs[d].masked_update(small))
    un = server.advance()
    for d in un.survivors:
        server.receive(devs[d].on_unmask(un))
    return server


def test_aggregator_secagg_unmask_100(benchmark):
    _info(benchmark, "aggregator", "SecAgg unmask: 100 devices, k = 40, 10 dropouts (rebuild + remove masks)")

    def run(server):
        result = server.advance()
        assert result.outcome == "applied" and len(result.survivors) == 90

    benchmark.pedantic(run, setup=lambda: ((_unmask_stage(),), {}), rounds=3)


def test_aggregator_int8_add_90(benchmark):
    _info(benchmark, "aggregator", "int8 FedAvg: add 90 updates (no SecAgg)")
    upd = codec.encode(DELTA, rounding="stochastic", seed=1)
    acc = Accumulator(N)

    def run():
        acc.reset()
        for _ in range(90):
            acc.add(upd, 540.0)

    benchmark(run)


# --- a whole round, every party in this process --------------------------------------------------

def test_round_int8_10(benchmark):
    _info(benchmark, "round", "round of 10: train + int8 encode + FedAvg")
    server = rounds.Server(W0.copy())
    local = np.empty_like(W0)

    def run():
        rnd = server.open_round(list(range(10)))
        for k in range(10):
            local[:] = server.params
            train.local_sgd(MODEL, local, X, Y, epochs=1, batch_size=10, lr=0.05, seed=k)
            np.subtract(local, server.params, out=local)
            rnd.submit(k, rnd.round_id, codec.encode(local, rounding="stochastic", seed=k), 540)
        server.close_round()

    benchmark.pedantic(run, rounds=5)


def test_round_secagg_10(benchmark):
    _info(benchmark, "round", "round of 10: train + SecAgg+ (b = 16) + FedAvg")
    server = rounds.Server(W0.copy())
    local = np.empty_like(W0)

    def run():
        rnd = server.open_round(list(range(10)))
        sround = ServerRound(Setup.create(rnd.round_id, range(10), CONFIG), N)

        def make(dev):
            local[:] = server.params
            train.local_sgd(MODEL, local, X, Y, epochs=1, batch_size=10, lr=0.05, seed=dev.id)
            np.subtract(local, server.params, out=local)
            return dev.masked_update(local)

        result = inprocess.run_round(sround, {k: Device(k) for k in range(10)}, make)
        rnd.submit_secure_mean(result.survivors, rnd.round_id, result.sum.mean(len(result.survivors)))
        server.close_round()

    benchmark.pedantic(run, rounds=5)
