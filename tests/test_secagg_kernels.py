"""The secure-aggregation kernels of csrc/secagg.c (fedtiny._core.secagg_*, l2norm_f32,
chacha20_stream) against numpy float64/int64 and `cryptography`'s ChaCha20 (tests/secagg_oracle.py),
on every SIMD path, over odd lengths and unaligned stream offsets; every SIMD path is bit-exact
with the scalar reference."""
import os

import numpy as np
import pytest

pytest.importorskip("cryptography")

import fedtiny  # noqa: E402
from fedtiny import _core  # noqa: E402
from kernel_cases import ODD_LENGTHS, SIMD_PATHS  # noqa: E402
import secagg_oracle as oracle  # noqa: E402

DT = {16: np.uint16, 32: np.uint32}


def seeds_signs(k, rng):
    seeds = [rng.bytes(32) for _ in range(k)]
    signs = rng.choice([-1, 1], size=k).astype(np.int8)
    return seeds, signs


# ---- ChaCha20 stream ---------------------------------------------------------------------

@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_chacha20_stream_equals_openssl_on_every_path(simd):
    fedtiny.set_simd(simd)
    rng = np.random.default_rng(1)
    for nblocks in list(range(0, 41)) + [100, 257]:
        key, nonce = rng.bytes(32), rng.bytes(12)
        counter0 = int(rng.choice([0, 1, rng.integers(0, 2**32 - 300), 2**32 - nblocks]))
        out = np.empty(64 * nblocks, np.uint8)
        _core.chacha20_stream(key, nonce, counter0, out)
        assert out.tobytes() == oracle.keystream(key, nonce, 64 * counter0, 64 * nblocks), (nblocks, counter0)


def test_chacha20_stream_rfc8439_and_wrap_guard():
    out = np.empty(64, np.uint8)
    _core.chacha20_stream(bytes(range(32)), bytes.fromhex("000000090000004a00000000"), 1, out, reference=True)
    assert out.tobytes().hex().startswith("10f1e7e4d13b5915500fdd1fa32071c4")  # RFC 8439 §2.3.2
    _core.chacha20_stream(bytes(32), bytes(12), 2**32 - 1, out)
    with pytest.raises(ValueError, match="exceeds 2\\^32"):
        _core.chacha20_stream(bytes(32), bytes(12), 2**32 - 1, np.empty(128, np.uint8))


# ---- the device's fused pass -------------------------------------------------------------

@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_encode_equals_the_oracle_bit_for_bit(simd, bits):
    fedtiny.set_simd(simd)
    rng = np.random.default_rng(bits)
    qmax = 3000 if bits == 16 else 2**20
    for n in ODD_LENGTHS[:-1] + [20_011]:
        offset = int(rng.choice([0, 1, 7, 31, 1000, 2**33 + 5]))
        x = (rng.standard_normal(n) * 0.02).astype(np.float32)
        x[: min(n, 3)] = [1e9, -1e9, 0.0][: min(n, 3)]            # clamped at +-qmax, and zero
        seeds, signs = seeds_signs(int(rng.integers(0, 5)), rng)
        rk = rng.bytes(32)
        scale, step = 0.8, 1e-4
        want = oracle.encode(x, offset, scale, step, qmax, rk, seeds, signs, bits)
        for reference in (False, True):
            out = np.empty(n, DT[bits])
            _core.secagg_encode(x, offset, scale, step, qmax, rk, b"".join(seeds), signs, out, reference=reference)
            np.testing.assert_array_equal(out, want, err_msg=f"n={n} offset={offset} ref={reference}")


def test_encode_in_chunks_equals_encode_at_once():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(5000).astype(np.float32)
    seeds, signs = seeds_signs(3, rng)
    rk = rng.bytes(32)
    whole = np.empty(5000, np.uint16)
    _core.secagg_encode(x, 0, 1.0, 0.01, 1000, rk, b"".join(seeds), signs, whole)
    parts = np.empty(5000, np.uint16)
    for a, b in [(0, 1), (1, 290), (290, 291), (291, 4097), (4097, 5000)]:
        _core.secagg_encode(x[a:b], a, 1.0, 0.01, 1000, rk, b"".join(seeds), signs, parts[a:b])
    np.testing.assert_array_equal(parts, whole)


def test_stochastic_rounding_is_unbiased_against_float64():
    """E[q] = x * scale / step: the mean over 64 rounding keys of 20,000 values, each value's grid
    position known in float64, is within 4 standard errors; every q is floor(t) or floor(t) + 1."""
    rng = np.random.default_rng(7)
    n, trials = 20_000, 64
    x = rng.uniform(-3, 3, n).astype(np.float32)
    scale, step, qmax = 0.9, 0.01, 1000
    t64 = np.clip(x.astype(np.float64) * (np.float32(scale) / np.float32(step)).astype(np.float64), -qmax, qmax)
    total = np.zeros(n)
    out = np.empty(n, np.uint16)
    for _ in range(trials):
        _core.secagg_encode(x, 0, scale, step, qmax, os.urandom(32), b"", [], out)
        q = oracle.centered(out, 16)
        assert np.all((q == np.floor(t64)) | (q == np.floor(t64) + 1))
        total += q
    err = total / trials - t64                   # per-value mean error; each q has variance <= 1/4
    z = err.sum() / np.sqrt(n * 0.25 / trials)   # all errors together: a standard normal if unbiased
    assert abs(z) < 4, z
    frac = t64 - np.floor(t64)
    assert np.abs(err).max() < 6 * np.sqrt(0.25 / trials) + 1e-6
    # and it is not round-to-nearest: values with frac near 0.5 land on both sides
    assert 0.3 < np.mean((total / trials - np.floor(t64))[np.abs(frac - 0.5) < 0.05]) < 0.7


# ---- the aggregator ----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_pairwise_masks_cancel_and_self_masks_are_removed(simd, bits):
    """Five devices, pairwise masks (+ for the lower id, - for the higher) and a self mask each: the
    aggregator's modular sum minus the self masks equals the plain integer sum of the grid vectors."""
    fedtiny.set_simd(simd)
    rng = np.random.default_rng(11 + bits)
    n, devices, qmax = 10_007, 5, 6000
    pair = {(i, j): rng.bytes(32) for i in range(devices) for j in range(i + 1, devices)}
    selfs = [rng.bytes(32) for _ in range(devices)]
    acc = np.zeros(n, DT[bits])
    plain = np.zeros(n, np.int64)
    for d in range(devices):
        x = rng.standard_normal(n).astype(np.float32)
        rk = rng.bytes(32)
        seeds, signs = [selfs[d]], [1]
        for (i, j), s in pair.items():
            if d in (i, j):
                seeds.append(s)
                signs.append(1 if d == i else -1)
        out = np.empty(n, DT[bits])
        _core.secagg_encode(x, 0, 1.0, 0.001, qmax, rk, b"".join(seeds), signs, out)
        _core.secagg_add(acc, out)
        plain += oracle.grid(x, 0, 1.0, 0.001, qmax, rk)
    _core.secagg_mask(acc, 0, b"".join(selfs), [-1] * devices)
    np.testing.assert_array_equal(oracle.centered(acc, bits), plain)
    mean = np.empty(n, np.float32)
    _core.secagg_decode(acc, 0.001 / devices, mean)
    np.testing.assert_array_equal(mean, (plain * (0.001 / devices)).astype(np.float32))


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_mask_equals_the_oracle_and_the_reference(simd, bits):
    fedtiny.set_simd(simd)
    rng = np.random.default_rng(3)
    for n in ODD_LENGTHS[:-1]:
        offset = int(rng.integers(0, 10_000))
        v0 = rng.integers(0, 2**bits, n, dtype=np.uint64).astype(DT[bits])
        seeds, signs = seeds_signs(int(rng.integers(1, 4)), rng)
        want = v0.astype(np.int64)
        for s, g in zip(seeds, signs):
            want = want + int(g) * oracle.stream_words(s, oracle.MASK_NONCE, offset, n, bits)
        want = np.mod(want, 2**bits)
        for reference in (False, True):
            v = v0.copy()
            _core.secagg_mask(v, offset, b"".join(seeds), signs, reference=reference)
            np.testing.assert_array_equal(v.astype(np.int64), want)


@pytest.mark.parametrize("bits", [16, 32])
def test_add_wraps_and_decode_is_centered(bits):
    rng = np.random.default_rng(2)
    for n in ODD_LENGTHS:
        a = rng.integers(0, 2**bits, n, dtype=np.uint64).astype(DT[bits])
        b = rng.integers(0, 2**bits, n, dtype=np.uint64).astype(DT[bits])
        want = np.mod(a.astype(np.int64) + b.astype(np.int64), 2**bits)
        _core.secagg_add(a, b)
        np.testing.assert_array_equal(a.astype(np.int64), want)
        out = np.empty(n, np.float32)
        _core.secagg_decode(a, 0.125, out)
        np.testing.assert_array_equal(out, (oracle.centered(a, bits) * 0.125).astype(np.float32))
    edge = np.array([0, 1, 2 ** (bits - 1) - 1, 2 ** (bits - 1), 2**bits - 1], DT[bits])
    out = np.empty(5, np.float32)
    _core.secagg_decode(edge, 1.0, out)
    want = [0.0, 1.0, float(np.float32(2 ** (bits - 1) - 1)), -float(2 ** (bits - 1)), -1.0]  # float32-rounded
    assert out.tolist() == want


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_add_and_decode_at_any_modulus_equal_numpy_and_the_reference(simd):
    """Any b in 2..32 (u32 elements) and 2..16 (u16): the sum modulo 2^b and its centered decode
    against int64 numpy, every SIMD path bit-exact with the scalar one, over odd lengths; bits of
    the inputs above b do not reach the result."""
    rng = np.random.default_rng(3)
    for width, bit_range in ((32, range(2, 33)), (16, range(2, 17))):
        for bits in bit_range:
            for n in ODD_LENGTHS:
                a0 = rng.integers(0, 2**width, n, dtype=np.uint64).astype(DT[width])
                b = rng.integers(0, 2**width, n, dtype=np.uint64).astype(DT[width])
                want = np.mod(a0.astype(np.int64) + b.astype(np.int64), 2**bits)
                got = {}
                for path in ("scalar", simd):
                    fedtiny.set_simd(path)
                    a = a0.copy()
                    _core.secagg_add(a, b, bits)
                    out = np.empty(n, np.float32)
                    _core.secagg_decode(a0, 0.37, out, bits)
                    got[path] = a, out
                fedtiny.set_simd(simd)
                np.testing.assert_array_equal(got[simd][0].astype(np.int64), want, err_msg=f"b={bits} n={n}")
                c = np.mod(a0.astype(np.int64), 2**bits)
                c[c >= 2 ** (bits - 1)] -= 2**bits
                np.testing.assert_array_equal(got[simd][1], (c.astype(np.float64) * 0.37).astype(np.float32))
                np.testing.assert_array_equal(got[simd][1].view(np.uint32), got["scalar"][1].view(np.uint32))
    edge = np.array([0, 1, 2**4 - 1, 2**4, 2**5 - 1, 2**31, 2**32 - 1], np.uint32)
    out = np.empty(7, np.float32)
    _core.secagg_decode(edge, 1.0, out, 5)
    assert out.tolist() == [0.0, 1.0, 15.0, -16.0, -1.0, 0.0, -1.0]


@pytest.mark.parametrize("bits, dtype", [(1, np.uint32), (33, np.uint32), (17, np.uint16), (1, np.uint16)])
def test_add_and_decode_refuse_a_modulus_outside_the_element(bits, dtype):
    a = np.zeros(5, dtype)
    with pytest.raises(ValueError, match="bits must be in 2"):
        _core.secagg_add(a, a.copy(), bits)
    with pytest.raises(ValueError, match="bits must be in 2"):
        _core.secagg_decode(a, 1.0, np.empty(5, np.float32), bits)
    assert not a.any()


# ---- the clip norm -----------------------------------------------------------------------

@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_l2norm_float64_and_identical_on_every_path(simd):
    rng = np.random.default_rng(4)
    for n in [0] + ODD_LENGTHS:
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20)).astype(np.float32)
        fedtiny.set_simd("scalar")
        ref = _core.l2norm_f32(x)
        fedtiny.set_simd(simd)
        got = _core.l2norm_f32(x)
        assert got == ref  # the same bits
        want = np.sqrt(np.sum(x.astype(np.float64) ** 2))
        assert got == pytest.approx(want, rel=1e-14, abs=0)


def test_l2norm_rejects_nonfinite():
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(100, np.float32)
        x[37] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            _core.l2norm_f32(x)


# ---- hostile arguments -------------------------------------------------------------------

def test_encode_rejects_bad_arguments_before_any_work():
    x = np.ones(10, np.float32)
    out = np.full(10, 7, np.uint16)
    rk = bytes(32)
    cases = [
        (dict(qmax=0), "qmax 0 is out of range"),
        (dict(qmax=32768), "qmax 32768 is out of range"),
        (dict(step=0.0), "step must be finite and > 0"),
        (dict(step=float("nan")), "step must be finite"),
        (dict(scale=-1.0), "scale finite and >= 0"),
        (dict(scale=3e38, step=1e-30), "step must be finite"),
        (dict(round_key=bytes(31)), "round_key must be 32 bytes"),
        (dict(seeds=bytes(33), signs=[1]), "multiple of 32 bytes"),
        (dict(seeds=bytes(64), signs=[1]), "2 seeds but 1 signs"),
        (dict(seeds=bytes(32), signs=[2]), "each sign is \\+1"),
    ]
    for kw, msg in cases:
        args = dict(x=x, offset=0, scale=1.0, step=0.1, qmax=100, round_key=rk, seeds=b"", signs=[], out=out)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            _core.secagg_encode(**args)
    assert (out == 7).all()
    with pytest.raises(ValueError, match="uint16 \\(b = 16\\) or uint32"):
        _core.secagg_encode(x, 0, 1.0, 0.1, 100, rk, b"", [], np.empty(10, np.int32))
    with pytest.raises(ValueError, match="has 9 elements, expected 10"):
        _core.secagg_encode(x, 0, 1.0, 0.1, 100, rk, b"", [], np.empty(9, np.uint16))
    with pytest.raises(ValueError, match="exceeds the stream"):
        _core.secagg_encode(x, 2**36, 1.0, 0.1, 100, rk, b"", [], out)
    ro = np.empty(10, np.uint16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _core.secagg_encode(x, 0, 1.0, 0.1, 100, rk, b"", [], ro)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_encode_rejects_nonfinite_input_and_overflowing_scaling(bad):
    x = np.ones(1000, np.float32)
    x[999] = bad   # 3e38 * (1 / 1e-3) overflows float32: the grid value is Inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        _core.secagg_encode(x, 0, 1.0, 1e-3, 100, bytes(32), b"", [], np.empty(1000, np.uint16))


def test_aggregator_kernels_reject_mismatched_vectors():
    a16, a32 = np.zeros(8, np.uint16), np.zeros(8, np.uint32)
    with pytest.raises(ValueError, match="same dtype"):
        _core.secagg_add(a16, a32)
    with pytest.raises(ValueError, match="has 7 elements, expected 8"):
        _core.secagg_add(a16, np.zeros(7, np.uint16))
    with pytest.raises(ValueError, match="aligned"):
        _core.secagg_add(a16, np.frombuffer(bytes(17), np.uint8)[1:].view(np.uint16))
    with pytest.raises(ValueError, match="uint16 \\(b = 16\\) or uint32"):
        _core.secagg_mask(np.zeros(8, np.int64), 0, bytes(32), [1])


@pytest.mark.parametrize("chunk", [7, 64])
def test_a_smaller_chunk_build_gives_the_same_bytes(tmp_path, chunk):
    """FT_SECAGG_CHUNK (the firmware's stack option) changes memory and speed, never the result."""
    import glob
    import shutil
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("a C compiler is needed")
    srcs = sorted(f for f in glob.glob(os.path.join(root, "csrc", "*.c")) + glob.glob(os.path.join(root, "csrc", "arch", "*.c"))
                  if "train" not in os.path.basename(f))   # the kernels without the training engine
    exe = str(tmp_path / "check")
    subprocess.run([cc, "-std=c99", "-O1", "-ffp-contract=off", f"-DFT_SECAGG_CHUNK={chunk}", "-I",
                    os.path.join(root, "csrc"), "-I", os.path.join(root, "firmware_bridge"),
                    os.path.join(root, "tests", "c", "secagg_chunk_check.c"), *srcs,
                    os.path.join(root, "firmware_bridge", "ft_chacha20.c"), "-lm", "-o", exe], check=True, timeout=300)
    got = np.frombuffer(subprocess.run([exe], capture_output=True, check=True, timeout=60).stdout, np.uint16)
    n = 3001
    i = np.arange(n, dtype=np.uint64)
    x = (((i * 2654435761) % 2**32 % 2001).astype(np.int64) - 1000).astype(np.float32) * np.float32(1e-5)
    seeds = [bytes((3 * (32 * j + b) + 7) % 256 for b in range(32)) for j in range(3)]
    out = np.empty(n, np.uint16)
    _core.secagg_encode(x, 5, 0.9, 1e-4, 3000, bytes(range(1, 33)), b"".join(seeds), [1, -1, 1], out)
    np.testing.assert_array_equal(got, out)
