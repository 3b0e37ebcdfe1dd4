"""The int8 block codec: every SIMD path against the scalar reference and the numpy spec."""
import os
import subprocess
import sys

import numpy as np
import pytest
from kernel_cases import ODD_LENGTHS, SIMD_PATHS

import fedtiny
from fedtiny import codec
from q8_oracle import quantize as oracle_quantize

MODES = [("nearest", False), ("stochastic", False), ("nearest", True), ("stochastic", True)]


def _delta(rng, n, scale=0.01):
    # heavy-tailed like real model deltas, with exact ties and zeros mixed in
    x = (rng.standard_t(3, n) * scale).astype(np.float32)
    x[rng.random(n) < 0.05] = 0.0
    return x


def _encode_on(path, x, rounding, seed, with_residual, residual0):
    fedtiny.set_simd(path)
    r = residual0.copy() if with_residual else None
    u = codec.encode(x, rounding=rounding, seed=seed, residual=r)
    return u.to_bytes(), r


@pytest.mark.parametrize("n", ODD_LENGTHS)
@pytest.mark.parametrize("rounding,with_residual", MODES)
def test_every_simd_path_is_bit_exact_with_scalar(rng, n, rounding, with_residual):
    x = _delta(rng, n)
    r0 = _delta(rng, n, 0.001)
    ref_bytes, ref_r = _encode_on("scalar", x, rounding, 77, with_residual, r0)
    for path in SIMD_PATHS:
        b, r = _encode_on(path, x, rounding, 77, with_residual, r0)
        assert b == ref_bytes, f"{path} differs from scalar at n={n}"
        if with_residual:
            np.testing.assert_array_equal(r, ref_r)


@pytest.mark.parametrize("path", SIMD_PATHS)
@pytest.mark.parametrize("n", [1, 7, 129, 1025, 200_003])
@pytest.mark.parametrize("rounding,with_residual", MODES)
def test_matches_numpy_spec_exactly(rng, path, n, rounding, with_residual):
    """The bytes are exactly what docs/PROTOCOL.md specifies (restated in numpy in q8_oracle.py)."""
    fedtiny.set_simd(path)
    x = _delta(rng, n)
    r = _delta(rng, n, 0.001) if with_residual else None
    d, q, new_r = oracle_quantize(x, rounding, seed=2**40 + 3, residual=None if r is None else r.copy())
    u = codec.encode(x, rounding=rounding, seed=2**40 + 3, residual=r)
    np.testing.assert_array_equal(u.scales, d)
    np.testing.assert_array_equal(u.values, q[:n])
    if with_residual:
        np.testing.assert_array_equal(r, new_r)


@pytest.mark.parametrize("path", SIMD_PATHS)
def test_decode_error_bounded_by_half_step(rng, path):
    """Oracle: numpy float64. Nearest rounding errs by at most d/2 per value, stochastic by < d."""
    fedtiny.set_simd(path)
    x = _delta(rng, 100_003)
    xb = np.zeros(codec.nblocks(x.size) * codec.QK)
    xb[: x.size] = x
    step = np.repeat(np.abs(xb.reshape(-1, codec.QK)).max(axis=1) / 127.0, codec.QK)[: x.size]
    err_n = np.abs(codec.encode(x).decode().astype(np.float64) - x.astype(np.float64))
    err_s = np.abs(codec.encode(x, rounding="stochastic", seed=1).decode().astype(np.float64) - x)
    REL = 1e-6  # float32 rounding of d and of v*id
    assert np.all(err_n <= step * (0.5 + REL) + 1e-12)
    assert np.all(err_s <= step * (1.0 + REL) + 1e-12)


def test_stochastic_rounding_is_unbiased():
    """Each block holds one value 127 (so d = 1 exactly) and values f in (0, 1): E[q] must be f.
    With 2^20 samples the mean of a Bernoulli(f) is within 5 sigma of f."""
    nb = 8192
    for f in (0.1, 0.37, 0.5, 0.9):
        x = np.full(nb * codec.QK, f, dtype=np.float32)
        x[:: codec.QK] = 127.0
        u = codec.encode(x, rounding="stochastic", seed=2024)
        assert np.all(u.scales == 1.0)
        q = u.values.reshape(nb, codec.QK)[:, 1:].astype(np.float64)
        sigma = np.sqrt(f * (1 - f) / q.size)
        assert abs(q.mean() - f) < 5 * sigma, (f, q.mean())
    # nearest rounding of the same data is biased (0.37 -> 0): the test above could fail.
    x = np.full(codec.QK, 0.37, dtype=np.float32)
    x[0] = 127.0
    assert codec.encode(x).values[1:].mean() == 0.0


def test_stochastic_same_seed_same_bytes_other_seed_other_bytes(rng):
    x = _delta(rng, 10_000)
    a = codec.encode(x, rounding="stochastic", seed=5).to_bytes()
    assert a == codec.encode(x, rounding="stochastic", seed=5).to_bytes()
    assert a != codec.encode(x, rounding="stochastic", seed=6).to_bytes()


def test_error_feedback_tracks_the_sum_of_true_deltas(rng):
    """Over many rounds, sum(decoded) - sum(true) equals -residual, which stays within one
    quantization step; without error feedback a consistent sub-step bias accumulates."""
    n, rounds = 4096, 200
    residual = np.zeros(n, np.float32)
    true_sum = np.zeros(n)
    ef_sum = np.zeros(n)
    plain_sum = np.zeros(n)
    big = np.zeros(n, np.float32)
    big[:: codec.QK] = 1.0  # forces d = 1/127 in every block: small values round to 0
    for t in range(rounds):
        delta = (big + rng.uniform(0.0, 0.003, n)).astype(np.float32)
        true_sum += delta
        ef_sum += codec.encode(delta, residual=residual).decode()
        plain_sum += codec.encode(delta).decode()
    step = 1.0 / 127
    np.testing.assert_allclose(ef_sum - true_sum, -residual, atol=1e-3)
    assert np.abs(ef_sum - true_sum).max() <= step  # bounded, does not grow with rounds
    assert np.abs(plain_sum - true_sum).max() > 30 * step  # the bias EF removes (~0.3 here)


def test_wire_round_trip_and_size(rng):
    n = 199_210  # the 2nn model
    x = _delta(rng, n)
    u = codec.encode(x, rounding="stochastic", seed=9)
    b = u.to_bytes()
    assert len(u) == n
    assert u.nbytes == len(b) == 16 + 132 * 1557 == codec.wire_size(n)
    assert len(b) / n <= 1.05
    v = codec.Int8Update.from_bytes(b)
    assert len(v) == n and v.to_bytes() == b
    np.testing.assert_array_equal(v.decode(), u.decode())
    assert b[:4] == b"FTQ8"


@pytest.mark.parametrize("bad,match", [
    (np.array([1.0, np.nan], np.float32), "NaN or Inf"),
    (np.array([1.0, np.inf], np.float32), "NaN or Inf"),
    (np.array([1.0, 2.0], np.float64), "float32"),
    (np.ones((2, 3), np.float32), "1-D"),
    (np.zeros(0, np.float32), "empty"),
    ([1.0, 2.0], "numpy array"),
])
def test_bad_delta_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(bad)


def test_nonfinite_in_any_block_on_every_path_is_refused():
    for path in SIMD_PATHS:
        fedtiny.set_simd(path)
        for pos in (0, 127, 128, 300, 1000):
            x = np.zeros(1001, np.float32)
            x[pos] = np.inf if pos % 2 else np.nan
            with pytest.raises(ValueError, match="NaN or Inf"):
                codec.encode(x, rounding="stochastic")


def test_nonfinite_delta_leaves_residual_untouched():
    r = np.full(300, 0.25, np.float32)
    x = np.ones(300, np.float32)
    x[299] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        codec.encode(x, residual=r)
    assert np.all(r == 0.25)


def test_bad_residual_and_options_raise():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="residual"):
        codec.encode(x, residual=np.zeros(10, np.float64))
    with pytest.raises(ValueError, match="residual"):
        codec.encode(x, residual=np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="rounding"):
        codec.encode(x, rounding="up")
    with pytest.raises(ValueError, match="seed"):
        codec.encode(x, seed=-1)


def test_from_bytes_rejects_damaged_input(rng):
    b = codec.encode(_delta(rng, 1000)).to_bytes()
    cases = {
        "truncated": b[:-1],
        "trailing": b + b"\0",
        "magic": b"XXXX" + b[4:],
        "version": b[:4] + bytes([9]) + b[5:],
        "block size": b[:6] + (64).to_bytes(2, "little") + b[8:],
        "0 parameters": b[:8] + (0).to_bytes(4, "little") + b[12:],
    }
    for what, data in cases.items():
        with pytest.raises(ValueError, match=what):
            codec.Int8Update.from_bytes(data)
    with pytest.raises(ValueError, match="header"):
        codec.Int8Update.from_bytes(b[:10])
    neg = bytearray(b)
    neg[16:20] = np.float32(-1.0).tobytes()
    with pytest.raises(ValueError, match="scale"):
        codec.Int8Update.from_bytes(bytes(neg))
    nan = bytearray(b)
    nan[16:20] = np.float32(np.nan).tobytes()
    with pytest.raises(ValueError, match="scale"):
        codec.Int8Update.from_bytes(bytes(nan))
    huge = bytearray(b)
    huge[16:20] = np.float32(1e37).tobytes()  # 127 * d would overflow to Inf
    with pytest.raises(ValueError, match="scale"):
        codec.Int8Update.from_bytes(bytes(huge))
    m128 = bytearray(b)
    m128[20] = 0x80
    with pytest.raises(ValueError, match="-128"):
        codec.Int8Update.from_bytes(bytes(m128))


def _run(env_value):
    env = dict(os.environ, FEDTINY_SIMD=env_value)
    return subprocess.run([sys.executable, "-c", "import fedtiny; print(fedtiny.simd_info())"],
                          env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))


def test_fedtiny_simd_env_forces_the_scalar_path():
    p = _run("scalar")
    assert p.returncode == 0 and p.stdout.strip() == "scalar"
    p = _run("auto")  # the best path: the last of simd_available() (scalar < avx2 < avx512; neon)
    assert p.returncode == 0
    assert p.stdout.strip() == SIMD_PATHS[-1]


def test_fedtiny_simd_env_rejects_unknown_path():
    p = _run("sse9")
    assert p.returncode != 0
    assert "FEDTINY_SIMD='sse9'" in p.stderr and "unknown SIMD path" in p.stderr
