"""The discrete Gaussian sampler is exact integer code: the same byte stream gives the same draws
natively, through the Python binding, and on aarch64 under qemu-user (and the 256-bit path too)."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from fedtiny import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
SYSROOT = "/usr/aarch64-linux-gnu"
CASES = [(1, 5000, 9, 4), (2, 3000, 65536, 1), (3, 2000, 1 << 40, 1 << 24), (4, 3000, 1, 3)]
M64 = (1 << 64) - 1


def splitmix_bytes(seed):
    state = seed

    def source(n):
        nonlocal state
        words = []
        for _ in range(n // 8):
            state = (state + 0x9E3779B97F4A7C15) & M64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            words.append(z ^ (z >> 31))
        return np.array(words, dtype="<u8").tobytes()
    return source


def build(cc, exe):
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "tests", "c", "dgauss_check.c"), os.path.join(ROOT, "csrc", "dgauss.c"),
                    "-o", exe], check=True)


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    return np.array([int(v) for v in out.split()], dtype=np.int64)


def binding(seed, n, num, den):
    out = np.empty(n, np.int64)
    _core.dgauss_s64(out, num, den, splitmix_bytes(seed))
    return out


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_native_build_and_binding_draw_the_same(tmp_path):
    exe = str(tmp_path / "dg")
    build("gcc", exe)
    for seed, n, num, den in CASES:
        native = run([exe, str(seed), str(n), str(num), str(den)])
        assert np.array_equal(native, binding(seed, n, num, den))
        assert len(np.unique(native)) > 3


@pytest.mark.skipif(not (CC and QEMU and os.path.isdir(SYSROOT)), reason="needs gcc-aarch64-linux-gnu and qemu-user")
def test_aarch64_draws_the_same(tmp_path):
    exe = str(tmp_path / "dg")
    build(CC, exe)
    for seed, n, num, den in CASES:
        arm = run([QEMU, "-L", SYSROOT, exe, str(seed), str(n), str(num), str(den)])
        assert np.array_equal(arm, binding(seed, n, num, den))
