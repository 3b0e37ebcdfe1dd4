"""The update-norm kernel (ft_sumsq_q8, csrc/norm_ref.c and csrc/arch/*): every SIMD path against
numpy float64 and bit for bit against the scalar reference, over odd lengths; the same in C
natively and NEON under qemu; fedtiny.bounds.update_norm / all_finite on top of it.
(Also run on arm64 by tests/platform/arm64.sh.)"""
import glob
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
from kernel_cases import ODD_LENGTHS, SIMD_PATHS

import fedtiny
from fedtiny import _core, bounds, codec


def _random_blocks(rng, n, *, max_scale=False):
    """Blocks as a device could send them: any int8 in [-127, 127], any legal scale."""
    nb = codec.nblocks(n)
    blocks = np.zeros(nb, dtype=codec.BLOCK_DTYPE)
    blocks["q"] = rng.integers(-127, 128, (nb, codec.QK), dtype=np.int8)
    blocks["d"] = codec.MAX_SCALE if max_scale else rng.lognormal(-6, 3, nb).astype(np.float32)
    return blocks


def _oracle(blocks, n):
    """numpy float64: decode every value in float64 and sum the squares."""
    v = blocks["d"].astype(np.float64)[:, None] * blocks["q"].astype(np.float64)
    return float(np.sum(v.reshape(-1)[:n] ** 2))


@pytest.mark.parametrize("n", ODD_LENGTHS)
@pytest.mark.parametrize("path", SIMD_PATHS)
def test_sumsq_q8_matches_float64_and_is_bit_exact_on_every_path(rng, n, path):
    blocks = _random_blocks(rng, n)
    blocks["q"].reshape(-1)[n:] = 77        # padding past n must not count
    fedtiny.set_simd("scalar")
    ref = _core.sumsq_q8(blocks.tobytes(), n)
    fedtiny.set_simd(path)
    got = _core.sumsq_q8(blocks.tobytes(), n)
    assert got == ref                       # same bits: integer block sums, float64 in block order
    assert got == pytest.approx(_oracle(blocks, n), rel=1e-12)


@pytest.mark.parametrize("path", SIMD_PATHS)
def test_sumsq_q8_of_maximal_scales_and_minus_128_is_finite_and_exact(path):
    n = 1000
    blocks = _random_blocks(np.random.default_rng(1), n, max_scale=True)
    blocks["q"][:] = -128                   # outside the codec's range; the kernel must still be exact
    fedtiny.set_simd(path)
    got = _core.sumsq_q8(blocks.tobytes(), n)
    assert math.isfinite(got)
    assert got == pytest.approx(_oracle(blocks, n), rel=1e-12)


@pytest.mark.parametrize("n", [1, 7, 129, 1023])
def test_sumsq_f32_matches_float64(rng, n):
    x = rng.standard_normal(n).astype(np.float32) * 1e30
    assert _core.sumsq_f32(x) == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-12)


def test_update_norm_of_an_encoded_update_is_the_decoded_norm(rng):
    x = rng.standard_normal(5000).astype(np.float32)
    u = codec.encode(x)
    # decode() rounds each d*q to float32; the kernel keeps d*q exact in float64: 1e-7 apart
    assert bounds.update_norm(u) == pytest.approx(np.linalg.norm(u.decode().astype(np.float64)), rel=1e-6)


def test_all_finite_is_exact_for_extreme_values():
    x = np.full(1001, np.finfo(np.float32).max, np.float32)
    assert bounds.all_finite(x)                       # n * FLT_MAX^2 does not overflow float64
    x[-1] = -np.inf
    assert not bounds.all_finite(x)
    x[-1] = np.nan
    assert not bounds.all_finite(x)


# --- the same check in C, on the path the CPU picks: natively, and NEON under qemu --------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
SYSROOT = "/usr/aarch64-linux-gnu"


def _build(cc, exe):
    # every kernel source, as tests/test_train_kernels_c.py builds them (ChaCha20 from the firmware)
    srcs = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.c")) + glob.glob(os.path.join(ROOT, "csrc", "arch", "*.c")))
    srcs.append(os.path.join(ROOT, "firmware_bridge", "ft_chacha20.c"))
    subprocess.run([cc, "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-I",
                    os.path.join(ROOT, "csrc"), "-I", os.path.join(ROOT, "firmware_bridge"),
                    os.path.join(ROOT, "tests", "c", "norm_check.c"), *srcs, "-lm", "-o", exe], check=True)


@pytest.mark.skipif(not (shutil.which("gcc") and os.uname().machine == "x86_64"), reason="native x86-64 gcc only")
def test_norm_kernel_in_c_native(tmp_path):
    exe = str(tmp_path / "norm_check")
    _build("gcc", exe)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().endswith("0 failure(s)"), r.stdout + r.stderr


@pytest.mark.skipif(not (CC and QEMU and os.path.isdir(SYSROOT)), reason="needs gcc-aarch64-linux-gnu and qemu-user")
def test_norm_kernel_neon_under_qemu(tmp_path):
    exe = str(tmp_path / "norm_check")
    _build(CC, exe)
    r = subprocess.run([QEMU, "-L", SYSROOT, exe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "neon: 0 failure(s)", r.stdout + r.stderr
