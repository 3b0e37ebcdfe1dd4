"""The engine's GEMM: scalar reference against numpy float64, SIMD paths against the reference
over odd sizes, both operand orientations the engine uses, and accumulate on/off."""
import numpy as np
import pytest

import fedtiny
from fedtiny import _core

SIZES = [(1, 1, 1), (1, 17, 3), (5, 7, 9), (6, 16, 1), (7, 33, 31), (13, 31, 257), (10, 200, 784),
         (25, 32, 576), (64, 800, 64), (3, 1023, 5), (0, 5, 3), (4, 5, 0)]
REL = 1e-5  # FMA and summation order: a few float32 ulps of the |A|·|B| magnitude


def run(M, N, K, transposed_a, accumulate, reference, rng, simd=None):
    a_mat = rng.normal(size=(M, K)).astype(np.float32)
    a = np.ascontiguousarray(a_mat.T if transposed_a else a_mat).reshape(-1)
    rsa, csa = (1, M) if transposed_a else (K, 1)
    ldb, ldc = N + 3, N + 1  # padded rows: the kernels must honour the strides
    b = rng.normal(size=(K, ldb)).astype(np.float32)
    c0 = rng.normal(size=(M, ldc)).astype(np.float32)
    c = c0.copy()
    if simd:
        fedtiny.set_simd(simd)
    _core.gemm_f32(M, N, K, a if a.size else np.zeros(1, np.float32), rsa, csa, b.reshape(-1) if b.size
                   else np.zeros(1, np.float32), ldb, c.reshape(-1) if c.size else np.zeros(1, np.float32),
                   ldc, accumulate, reference)
    want = a_mat.astype(np.float64) @ b[:, :N].astype(np.float64)
    if accumulate:
        want += c0[:, :N]
    mag = np.abs(a_mat).astype(np.float64) @ np.abs(b[:, :N]).astype(np.float64) + np.abs(c0[:, :N])
    return c, c0, want, mag


@pytest.mark.parametrize("M,N,K", SIZES)
@pytest.mark.parametrize("transposed_a", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_reference_matches_float64(M, N, K, transposed_a, accumulate):
    c, c0, want, mag = run(M, N, K, transposed_a, accumulate, True, np.random.default_rng(M * 1000 + N + K))
    assert np.all(np.abs(c[:, :N] - want) <= REL * (mag + 1e-30))
    np.testing.assert_array_equal(c[:, N:], c0[:, N:])  # the padding of C is never written


@pytest.mark.parametrize("simd", fedtiny.simd_available())
@pytest.mark.parametrize("M,N,K", SIZES)
@pytest.mark.parametrize("transposed_a", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_simd_matches_reference(simd, M, N, K, transposed_a, accumulate):
    before = fedtiny.simd_info()
    try:
        seed = M * 7919 + N * 31 + K
        got, c0, want, mag = run(M, N, K, transposed_a, accumulate, False, np.random.default_rng(seed), simd)
        ref, *_ = run(M, N, K, transposed_a, accumulate, True, np.random.default_rng(seed))
    finally:
        fedtiny.set_simd(before)
    assert np.all(np.abs(got[:, :N] - ref[:, :N]) <= 2 * REL * (mag + 1e-30))
    np.testing.assert_array_equal(got[:, N:], c0[:, N:])


def test_gemm_rejects_out_of_bounds_operands():
    a = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="a is too small"):
        _core.gemm_f32(3, 2, 3, a, 3, 1, np.zeros(6, np.float32), 2, np.zeros(6, np.float32), 2, False)
    with pytest.raises(ValueError, match="c is too small"):
        _core.gemm_f32(2, 2, 3, a, 3, 1, np.zeros(6, np.float32), 2, np.zeros(3, np.float32), 2, False)
