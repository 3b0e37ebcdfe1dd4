"""Aggregator side of a round (fedtiny.rounds + the C accumulator): time per round and traced peak
memory, for 10, 100 and 1,000 int8 updates of a 2nn (199,210 parameters).

The peak is measured with tracemalloc around open_round .. close_round while the update bytes
already exist (they stand for what arrives from the network), so it is exactly what the
aggregator allocates; it is recorded in the benchmark's extra_info and checked to stay O(model).
"""
import tracemalloc

import numpy as np
import pytest

from fedtiny import codec
from fedtiny.rounds import Server

N_PARAMS = 199_210  # the "2nn" of the model conventions


@pytest.fixture(scope="module")
def update():
    rng = np.random.default_rng(0)
    return codec.encode((rng.standard_normal(N_PARAMS) * 0.01).astype(np.float32))


def _one_round(server: Server, update: codec.Int8Update, n_clients: int) -> None:
    rnd = server.open_round(range(n_clients))
    for k in range(n_clients):
        rnd.submit(k, rnd.round_id, update, 600)
    server.close_round()


def _traced_peak(n_clients: int, update) -> int:
    server = Server(np.zeros(N_PARAMS, np.float32))
    tracemalloc.start()
    try:
        _one_round(server, update, n_clients)  # warm: the accumulator exists from the constructor on
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        _one_round(server, update, n_clients)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("n_clients", [10, 100, 1000])
def test_aggregate_round_int8(benchmark, update, n_clients):
    peak = _traced_peak(n_clients, update)
    model_bytes = 4 * N_PARAMS
    benchmark.extra_info.update(clients=n_clients, traced_peak_bytes=peak, model_bytes=model_bytes,
                                peak_per_client_bytes=peak / n_clients)
    # the round's own bookkeeping (who is selected, who answered) is the only per-client memory
    assert peak < 300 * n_clients + 4096, peak
    server = Server(np.zeros(N_PARAMS, np.float32))
    benchmark(_one_round, server, update, n_clients)


def _async_steps(server: Server, update: codec.Int8Update, k: int, steps: int) -> None:
    """FedBuff: `steps` buffers of K int8 updates, each from a model 0..4 steps old (poly weighting)."""
    for _ in range(steps):
        rnd = server.open_buffer(k, max_staleness=8)
        for i in range(k):
            rnd.submit(i, max(1, rnd.round_id - i % 5), update, 600)
        server.close_round()


@pytest.mark.parametrize("k", [10, 100])
def test_aggregate_async_buffer_int8(benchmark, update, k):
    """A FedBuff server step keeps what a synchronous round keeps: peak O(model), a few bytes per update."""
    server = Server(np.zeros(N_PARAMS, np.float32))  # FedAvg (fedavgm's step makes a model-sized temporary)
    _async_steps(server, update, k, 2)  # warm
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        _async_steps(server, update, k, 3)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    benchmark.extra_info.update(buffer=k, traced_peak_bytes=peak, model_bytes=4 * N_PARAMS, state_bytes=server.nbytes)
    assert peak < 300 * k + 4096, peak
    benchmark(_async_steps, server, update, k, 1)
