"""The wire library's C unit tests on the processor it is written for: cross-built for Cortex-M4
(arm-none-eabi-gcc -Os, as `make cortex-m4`) and run on an emulated Cortex-M4 board
(qemu-system-arm -M mps2-an386): the start-up and memory map of firmware_bridge/tests/m4/ (the
crypto benchmark's), plus tests/c/m4_semihost_io.c for the tests' printf.

Why: some bugs are invisible on x86. A replay window written `behind > 64` instead of `>= 64`
computes `seen >> 64` for a frame exactly 64 behind; x86 and aarch64 shift by the count modulo 64
(`seen >> 0`, whose bit 0 is always set: refused by luck), while Cortex-M4 code yields 0 and
ACCEPTS the replay. test_frame.c checks that frame (sequence 36 after 100); only this run, or the
UBSan build, fails on the mutant."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware_bridge")
M4 = os.path.join(FIRMWARE, "tests", "m4")
IO = os.path.join(ROOT, "tests", "c", "m4_semihost_io.c")
ARM_CC, QEMU = shutil.which("arm-none-eabi-gcc"), shutil.which("qemu-system-arm")
CFLAGS = ["-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-Wall", "-Wextra", "-Werror"]


def run_on_m4(tmp_path, test: str) -> str:
    if ARM_CC is None:
        pytest.skip("arm-none-eabi-gcc is not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    if QEMU is None:
        pytest.skip("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
    elf = str(tmp_path / f"{test}.elf")
    srcs = [os.path.join(FIRMWARE, f) for f in ("ft_sha256.c", "ft_cobs.c", "ft_frame.c")]
    subprocess.run([ARM_CC, *CFLAGS, "-I", FIRMWARE, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
                    "-T", os.path.join(M4, "mps2_an386.ld"), "-Wl,--gc-sections",
                    os.path.join(FIRMWARE, "tests", f"{test}.c"), *srcs, os.path.join(M4, "startup.c"), IO, "-o", elf],
                    check=True, timeout=120, capture_output=True)
    proc = subprocess.run([QEMU, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-semihosting", "-kernel", elf],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize("test", ["test_sha256", "test_cobs", "test_frame"])
def test_c_unit_tests_pass_on_cortex_m4(tmp_path, test):
    out = run_on_m4(tmp_path, test)
    m = re.search(rf"^{test}: (\d+) checks, (\d+) failed$", out, re.M)
    assert m and int(m.group(1)) > 0 and m.group(2) == "0", out


def test_deepest_stack_is_measured_and_within_1_kib():
    """The README's "deepest stack" figure is what bench/m4_stack.py prints (GCC's call graph and
    per-function frames, -Os for Cortex-M4); a firmware must reserve at least that much."""
    if ARM_CC is None:
        pytest.skip("arm-none-eabi-gcc is not installed (apt-get install gcc-arm-none-eabi)")
    import sys
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "m4_stack.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = re.match(r"deepest stack on Cortex-M4 \(arm-none-eabi-gcc -Os\): (\d+) bytes, ft_wire_decode \(\d+\) -> ",
                 proc.stdout)
    assert m and 256 < int(m.group(1)) <= 1024, proc.stdout
