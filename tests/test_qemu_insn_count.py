"""The instruction-count plugin behind bench/arm_insns.py (tests/platform/qemu_insn_count.c):
against a guest whose instruction count is known by construction, and the per-step arithmetic.

The guest is a static aarch64 program whose measured region is one inline-assembly block: a
marker system call, a loop of n iterations of 5 instructions, a second marker. Between the two
markers exactly 1 + 5n + 6 instructions run (the loop-counter load, the loop, the second marker's
six instructions including its svc), so the plugin must print 5n + 7. Needs Debian's dynamic
qemu-user (`qemu-aarch64`; the -static build cannot load plugins), a C compiler and
gcc-aarch64-linux-gnu."""
import importlib.util
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU = shutil.which("qemu-aarch64")
CROSS = shutil.which("aarch64-linux-gnu-gcc")
CC = shutil.which("cc") or shutil.which("gcc")

GUEST = r"""
#include <stdlib.h>
#define MARKER "mov x0, #-1\n movz x1, #0x4d4b\n movk x1, #0x4654, lsl #16\n mov x2, #0\n mov x8, #62\n svc #0\n"
int main(int argc, char **argv)
{
    unsigned long n = strtoul(argv[1], 0, 10);
    __asm__ volatile(MARKER
                     "mov x9, %0\n"
                     "1: nop\n nop\n nop\n subs x9, x9, #1\n b.ne 1b\n"
                     MARKER
                     : : "r"(n) : "x0", "x1", "x2", "x8", "x9", "memory", "cc");
    return argc == 2 ? 0 : 1;
}
"""

needs_tools = pytest.mark.skipif(not (QEMU and CROSS and CC),
                                 reason="needs qemu-user (qemu-aarch64, with plugins), cc and gcc-aarch64-linux-gnu")


def _bench():
    spec = importlib.util.spec_from_file_location("arm_insns", os.path.join(ROOT, "bench", "arm_insns.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_tools
def test_plugin_counts_the_instructions_between_markers(tmp_path):
    plugin = _bench().build_plugin(CC, str(tmp_path))
    src, exe = tmp_path / "guest.c", str(tmp_path / "guest")
    src.write_text(GUEST)
    subprocess.run([CROSS, "-static", "-O2", "-o", exe, str(src)], check=True)
    for n in (1, 1000, 123457):
        r = subprocess.run([QEMU, "-d", "plugin", "-plugin", plugin, exe, str(n)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        counts = [int(k) for _, k in re.findall(r"^fedtiny-insn (\d+) (\d+)$", r.stderr, re.M)]
        assert len(counts) == 2, r.stderr          # exactly the two markers: no other syscall matches
        assert counts[1] == 5 * n + 7, (n, counts)


@needs_tools
def test_plugin_refuses_arguments(tmp_path):
    plugin = _bench().build_plugin(CC, str(tmp_path))
    r = subprocess.run([QEMU, "-plugin", f"{plugin},x=1", "/bin/true"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "takes no arguments" in r.stderr


def test_per_step_is_the_slope_between_two_call_lengths():
    bench = _bench()
    calls = [{"simd": s, "batch": b, "steps": k} for s in ("scalar", "neon") for b in (10,) for k in (1, 2, 12)]
    # call count = fixed + steps * per_step; before each call's marker pair some unrelated work
    fixed, per = {"scalar": 3_000, "neon": 2_900}, {"scalar": 900, "neon": 300}
    counts = []
    for c in calls:
        counts += [77_777, fixed[c["simd"]] + c["steps"] * per[c["simd"]]]
    (row,) = bench.per_step(calls, counts, 2, 12)
    assert row["scalar_insns_per_step"] == 900 and row["neon_insns_per_step"] == 300
    assert row["scalar_call_overhead_insns"] == 3_000 and row["neon_call_overhead_insns"] == 2_900
    assert row["scalar_over_neon"] == 3.0
    with pytest.raises(SystemExit, match="markers"):
        bench.per_step(calls, counts[:-1], 2, 12)
