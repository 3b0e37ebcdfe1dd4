"""In-place FedAvg: kernels on every SIMD path against scalar, the accumulator against a numpy
float64 weighted mean, chunked adds, memory, and bad input."""
import tracemalloc

import numpy as np
import pytest
from kernel_cases import ODD_LENGTHS, SIMD_PATHS

import fedtiny
from fedtiny import _core, codec
from fedtiny.fedavg import Accumulator


def _run_kernels(path, n, seed):
    rng = np.random.default_rng(seed)
    fedtiny.set_simd(path)
    x = (rng.standard_normal(n) * 0.02).astype(np.float32)
    u = codec.encode(x, rounding="stochastic", seed=seed)
    acc = (rng.standard_normal(n)).astype(np.float32)
    _core.fedavg_acc_q8(acc, 0, u.blocks, n, 37.0)
    _core.fedavg_acc_f32(acc, x, 3.5)
    w = rng.standard_normal(n).astype(np.float32)
    dec = u.decode()
    _core.fedavg_apply_f32(w, acc, 1 / 40.5)
    return dec, w, acc


@pytest.mark.parametrize("n", ODD_LENGTHS)
def test_kernels_bit_exact_across_paths(n):
    ref = _run_kernels("scalar", n, n)
    for path in SIMD_PATHS:
        got = _run_kernels(path, n, n)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b, err_msg=f"{path} n={n}")
    assert np.all(ref[2] == 0)  # apply resets the accumulator


@pytest.mark.parametrize("path", SIMD_PATHS)
def test_fedavg_equals_numpy_weighted_mean(path):
    """w_{t+1} = w_t + sum n_k d_k / sum n_k, with d_k the decoded updates (float64 oracle)."""
    fedtiny.set_simd(path)
    rng = np.random.default_rng(7)
    n, K = 50_001, 9
    w = rng.standard_normal(n).astype(np.float32)
    weights = rng.integers(1, 700, K).astype(float)
    acc = Accumulator(n)
    decoded = []
    for k in range(K):
        delta = (rng.standard_normal(n) * 0.05).astype(np.float32)
        if k % 3 == 0:
            acc.add(delta, weights[k])  # float32 codec
            decoded.append(delta.astype(np.float64))
        else:
            u = codec.encode(delta, rounding="stochastic", seed=k)
            acc.add(u, weights[k])
            decoded.append(u.decode().astype(np.float64))
    assert acc.total_weight == weights.sum() and acc.count == K
    expected = w.astype(np.float64) + np.tensordot(weights, np.array(decoded), 1) / weights.sum()
    acc.apply(w)
    # float32 accumulation of K terms: error well under 1e-6 of the update's magnitude
    np.testing.assert_allclose(w, expected, rtol=0, atol=2e-6)
    assert acc.total_weight == 0 and acc.count == 0


def test_fedavg_hand_checkable_numbers():
    """Two clients, n_k = 1 and 3: w = 10 + (1*4 + 3*(-4)) / 4 = 8."""
    acc = Accumulator(3)
    acc.add(np.full(3, 4.0, np.float32), 1)
    acc.add(np.full(3, -4.0, np.float32), 3)
    w = np.full(3, 10.0, np.float32)
    acc.apply(w)
    np.testing.assert_array_equal(w, [8.0, 8.0, 8.0])


def test_chunks_in_any_order_equal_the_whole_update():
    rng = np.random.default_rng(3)
    n = 199_210
    u = codec.encode((rng.standard_normal(n) * 0.01).astype(np.float32))
    whole = Accumulator(n)
    whole.add(u, 60)
    chunked = Accumulator(n)
    blocks = u.blocks
    per = 8 * codec.BLOCK_BYTES  # 8 blocks per chunk, as a datagram carries them
    starts = list(range(0, len(blocks), per))
    for s in rng.permutation(starts):
        chunked.add_chunk(blocks[s: s + per], s // codec.BLOCK_BYTES, 60)
    chunked.add_weight(60)
    w1 = np.zeros(n, np.float32)
    w2 = np.zeros(n, np.float32)
    whole.apply(w1)
    chunked.apply(w2)
    np.testing.assert_array_equal(w1, w2)


def test_memory_does_not_grow_with_the_number_of_updates():
    n = 200_000
    u = codec.encode(np.full(n, 0.01, np.float32))
    acc = Accumulator(n)
    assert acc.nbytes == 4 * n
    tracemalloc.start()
    for _ in range(500):
        acc.add(u, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024, f"adding 500 updates allocated {peak} bytes at peak"


def test_bad_inputs_raise():
    acc = Accumulator(300)
    good = np.zeros(300, np.float32)
    u = codec.encode(np.ones(300, np.float32))
    for w in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight"):
            acc.add(good, w)
    with pytest.raises(ValueError, match="parameters"):
        acc.add(codec.encode(np.ones(301, np.float32)), 1)
    with pytest.raises(ValueError, match="float32"):
        acc.add(np.zeros(300), 1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        acc.add(np.full(300, np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="LowbitUpdate or a float32 array"):
        acc.add([0.0] * 300, 1)
    with pytest.raises(ValueError, match="whole number"):
        acc.add_chunk(u.blocks[:100], 0, 1)
    with pytest.raises(ValueError, match="starts at block"):
        acc.add_chunk(u.blocks[:132], 3, 1)
    with pytest.raises(ValueError, match="past the model"):
        acc.add_chunk(u.blocks[:264], 2, 1)
    bad = bytearray(u.blocks[:132])
    bad[0:4] = np.float32(1e37).tobytes()
    with pytest.raises(ValueError, match="bad_scale"):
        acc.add_chunk(bytes(bad), 0, 1)
    bad = bytearray(u.blocks[:132])
    bad[10] = 0x80
    with pytest.raises(ValueError, match="bad_value"):
        acc.add_chunk(bytes(bad), 0, 1)
    assert not np.any(acc._acc)  # nothing of the refused chunks reached the sum
    with pytest.raises(ValueError, match="nothing to apply"):
        acc.apply(np.zeros(300, np.float32))
    acc.add(u, 1)
    with pytest.raises(ValueError, match="float32"):
        acc.apply(np.zeros(300))  # a float64 copy would silently lose the write
    ro = np.zeros(300, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        acc.apply(ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        acc.apply(np.zeros(600, np.float32)[::2])
    with pytest.raises(ValueError, match="expected 300"):
        acc.apply(np.zeros(299, np.float32))
    with pytest.raises(ValueError, match="n_params"):
        Accumulator(0)
