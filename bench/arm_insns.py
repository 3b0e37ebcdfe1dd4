"""Instructions per 2nn training step on Arm, scalar kernels vs NEON, counted under qemu-user.

    python bench/arm_insns.py [--arch arm64|armhf|both] [--batch 10 32] [--steps 2 12]

Runs fedtiny's local SGD (fedtiny.train.local_sgd, the C loop of csrc/train_net.c) on the first
600 Fashion-MNIST training images inside the Debian root that tests/platform/arm64.sh (armhf.sh)
built and installed fedtiny into, emulated by qemu-user with a TCG plugin that counts executed
guest instructions (tests/platform/qemu_insn_count.c, built here with the host's cc). The guest
program marks the start and end of each local_sgd call with a marker system call; the plugin
prints the instructions between markers. Per step = (count of a call of S2 steps - count of a
call of S1 steps) / (S2 - S1): the call's fixed cost (argument checks, loading the weights into
the arena) cancels. The kernels are forced to one path with fedtiny.set_simd (the FEDTINY_SIMD
override), scalar then neon, in the same process on the same data.

Needs: qemu-user with plugin support (Debian's `qemu-user` package: /usr/bin/qemu-aarch64, not the
-static build), a C compiler, and the root of tests/platform/arm64.sh / armhf.sh
(FEDTINY_ARM64_ROOT / FEDTINY_ARMHF_ROOT, default ${TMPDIR:-/tmp}/fedtiny-<arch>-root) with its
venv in /fedtiny-run/venv: run that check first. The root is only read (qemu -L), never
changed. Prints one JSON line per architecture and batch size.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_SRC = os.path.join(HERE, "..", "tests", "platform", "qemu_insn_count.c")
ARCHES = {"arm64": ("qemu-aarch64", "aarch64"), "armhf": ("qemu-arm", "armv7l")}

PREPARE = """
import sys
import numpy as np
from fedtiny import datasets
d = datasets.load("fashion-mnist")
n = int(sys.argv[2])
np.savez(sys.argv[1], x=d.x_train[:n].reshape(n, -1), y=d.y_train[:n])
"""

# Runs inside the emulated root. One marker before and after every measured call.
GUEST = """
import json, os, platform, sys
import numpy as np
import fedtiny
from fedtiny import model, train

def mark():
    try:
        os.lseek(-1, 0x46544D4B, 0)     # the plugin's marker; fails with EBADF, changes nothing
    except OSError:
        pass

data = np.load(sys.argv[1])
x, y = data["x"], data["y"]
batches = [int(b) for b in sys.argv[2].split(",")]
s1, s2 = (int(s) for s in sys.argv[3].split(","))
m = model.build("2nn")
calls = []
for simd in ("scalar", "neon"):
    fedtiny.set_simd(simd)
    assert fedtiny.simd_info() == simd, fedtiny.simd_info()
    for batch in batches:
        for steps in (1, s1, s2):          # the first call allocates the arena: not measured
            p = m.init(seed=0)
            mark()
            r = train.local_sgd(m, p, x, y, epochs=1, batch_size=batch, lr=0.05, seed=1, max_steps=steps)
            mark()
            assert r.steps == steps, (r.steps, steps)
            calls.append({"simd": simd, "batch": batch, "steps": steps, "loss": r.loss})
print(json.dumps({"machine": platform.machine(), "numpy": np.__version__, "available": fedtiny.simd_available(),
                  "calls": calls}))
"""


def build_plugin(cc: str, out_dir: str) -> str:
    so = os.path.join(out_dir, "qemu_insn_count.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", so, PLUGIN_SRC], check=True)
    return so


def site_packages(root: str) -> str:
    lib = os.path.join(root, "fedtiny-run", "venv", "lib")
    found = [os.path.join(lib, d, "site-packages") for d in sorted(os.listdir(lib))] if os.path.isdir(lib) else []
    found = [p for p in found if os.path.isdir(os.path.join(p, "fedtiny"))]
    if not found:
        raise SystemExit(f"no fedtiny installed in {root}/fedtiny-run/venv: run tests/platform/arm64.sh "
                         f"(or armhf.sh) first")
    return found[0]


def guest_library_path(root: str) -> str:
    """Library folders behind the root's absolute symlinks (Debian's alternatives, e.g. libblas.so.3
    -> /etc/alternatives/... -> .../blas/libblas.so.3): the host resolves an absolute link outside
    the root. They are given as host paths: qemu 7.2 does not map the loader's statx of a folder
    into the root, so the loader would drop a root-relative folder as missing."""
    dirs = []
    for lib in glob.glob(os.path.join(root, "usr", "lib", "*-linux-gnu*")):
        for entry in os.scandir(lib):
            target, hops = entry.path, 0
            while os.path.islink(target) and os.readlink(target).startswith("/") and hops < 8:
                target, hops = root + os.readlink(target), hops + 1
            if hops and os.path.isfile(target):
                d = os.path.dirname(os.path.realpath(target))
                if d not in dirs:
                    dirs.append(d)
    return ":".join(dirs)


def per_step(calls: list[dict], counts: list[int], s1: int, s2: int) -> list[dict]:
    """Pair each call with its instruction count; per step = (I(s2) - I(s1)) / (s2 - s1)."""
    if len(counts) != 2 * len(calls):
        raise SystemExit(f"expected {2 * len(calls)} markers from the plugin, got {len(counts)}")
    measured = {(c["simd"], c["batch"], c["steps"]): counts[2 * i + 1] for i, c in enumerate(calls)}
    rows = []
    for batch in sorted({c["batch"] for c in calls}):
        row = {"batch": batch}
        for simd in ("scalar", "neon"):
            i1, i2 = measured[(simd, batch, s1)], measured[(simd, batch, s2)]
            row[f"{simd}_insns_per_step"] = round((i2 - i1) / (s2 - s1))
            row[f"{simd}_call_overhead_insns"] = round(i1 - s1 * (i2 - i1) / (s2 - s1))
        row["scalar_over_neon"] = round(row["scalar_insns_per_step"] / row["neon_insns_per_step"], 2)
        rows.append(row)
    return rows


def run_arch(arch: str, batches: list[int], s1: int, s2: int, plugin: str, npz: str, qemu_dir: str | None) -> None:
    qemu_name, _ = ARCHES[arch]
    qemu = shutil.which(qemu_name, path=qemu_dir) if qemu_dir else shutil.which(qemu_name)
    if qemu is None:
        raise SystemExit(f"{qemu_name} not found: install Debian's qemu-user (the -static build has no plugins)")
    root = os.environ.get(f"FEDTINY_{arch.upper()}_ROOT",
                          os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fedtiny-{arch}-root"))
    sp = site_packages(root)
    py = os.path.join(root, "usr", "bin", "python3")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "OPENBLAS_NUM_THREADS": "1",            # one guest thread: the plugin's counter is not atomic
           "PYTHONPATH": sp, "LD_LIBRARY_PATH": guest_library_path(root)}
    cmd = [qemu, "-d", "plugin", "-L", root, "-plugin", plugin, py, "-P", "-c", GUEST, npz,
           ",".join(map(str, batches)), f"{s1},{s2}"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{arch}: the guest failed ({p.returncode}):\n{p.stderr[-2000:]}")
    counts = [int(n) for n in re.findall(r"^fedtiny-insn \d+ (\d+)$", p.stderr, re.M)]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for row in per_step(out["calls"], counts, s1, s2):
        print(json.dumps({"arch": arch, "machine": out["machine"], "model": "2nn", "numpy": out["numpy"],
                          "steps_measured": [s1, s2], **row}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["arm64", "armhf", "both"], default="arm64")
    ap.add_argument("--batch", type=int, nargs="+", default=[10, 32])
    ap.add_argument("--steps", type=int, nargs=2, default=[2, 12], metavar=("S1", "S2"))
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--qemu-dir", default=None, help="directory holding qemu-aarch64 / qemu-arm (default: PATH)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    a = ap.parse_args()
    s1, s2 = a.steps
    if not 1 <= s1 < s2 or any(b < 1 for b in a.batch) or max(a.batch) * s2 > a.samples:
        raise SystemExit("need 1 <= S1 < S2, batches >= 1 and batch * S2 <= --samples (one epoch)")
    with tempfile.TemporaryDirectory() as tmp:
        plugin = build_plugin(a.cc, tmp)
        npz = os.path.join(tmp, "fmnist.npz")
        # run from the scratch directory: `python -c` puts its working directory first on sys.path,
        # and in a checkout without an in-place build that would import the uncompiled source tree
        subprocess.run([sys.executable, "-c", PREPARE, npz, str(a.samples)], check=True, timeout=300, cwd=tmp)
        for arch in (["arm64", "armhf"] if a.arch == "both" else [a.arch]):
            run_arch(arch, a.batch, s1, s2, plugin, npz, a.qemu_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
