"""Mutation check: apply each curated mutation (tests/mutation/mutants.py) to a scratch copy of the
checkout, one at a time, run the tests that should catch it, and report caught / NOT caught.

    python tests/mutation/run.py                 # every mutant; exit 1 if one is not caught
    python tests/mutation/run.py --only ID ...   # some of them
    python tests/mutation/run.py --list

Run from a checkout built in place (`pip install -e '.[test,tflite]'`, plus pybind11 for the csrc
mutants): the scratch copy gets the checkout's files (tracked and untracked, not ignored) and its
compiled modules, and `PYTHONPATH=<scratch>` makes every test, subprocess included, import the
scratch package. The working tree is never written. A mutant in csrc/ is rebuilt by compiling the
mutated C files and linking them with objects compiled once from the unmutated sources (the flags of
setup.py); a mutant in firmware_bridge/ rebuilds fedtiny._wire with its cffi build script (the C
unit tests compile the scratch sources themselves). Before the mutants, every test named in the list
must pass on the unmutated scratch copy. docs/testing.md gives the run time."""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from mutants import MUTANTS  # noqa: E402

TEST_TIMEOUT = 300


def core_build_spec(root: str) -> tuple[list[str], list[str], list[str]]:
    """(C sources, include dirs, C flags) of fedtiny._core's C library, read from setup.py itself
    (setuptools.setup intercepted), so the mutants are built as pip builds them."""
    import runpy
    import setuptools
    captured: dict = {}
    real, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        os.chdir(root)
        runpy.run_path(os.path.join(root, "setup.py"))
    finally:
        setuptools.setup = real
        os.chdir(cwd)
    (_, lib), = captured["libraries"]
    flags = [f for f in lib["cflags"] if not f.startswith("-W")]
    return list(lib["sources"]), list(lib["include_dirs"]), flags


def log(msg: str) -> None:
    print(msg, flush=True)


class Scratch:
    def __init__(self, root: str):
        self.dir = tempfile.mkdtemp(prefix="fedtiny-mutation-")
        files = subprocess.run(["git", "-C", root, "ls-files", "-co", "--exclude-standard", "-z"],
                               capture_output=True, text=True, check=True).stdout.split("\0")
        for f in filter(None, files):
            src = os.path.join(root, f)
            if os.path.isfile(src):
                dst = os.path.join(self.dir, f)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst)
        self.modules = {}
        for pattern in ("_core*.so", "_wire*.so"):
            found = glob.glob(os.path.join(root, "fedtiny", pattern))
            if not found:
                raise SystemExit(f"run.py: error: no fedtiny/{pattern} in {root}: build in place first "
                                 "(pip install -e '.[test,tflite]')")
            name = os.path.basename(found[0])
            shutil.copy2(found[0], os.path.join(self.dir, "fedtiny", name))
            self.modules[pattern[:5]] = name
        self.build = os.path.join(self.dir, ".mutation-build")
        os.makedirs(self.build)
        for name in self.modules.values():   # pristine copies to restore after a rebuild
            shutil.copy2(os.path.join(self.dir, "fedtiny", name), os.path.join(self.build, name))
        self.env = {**os.environ, "PYTHONPATH": self.dir, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.env.pop("CI", None)
        self._objects_ready = False
        self.c_sources, self.c_includes, self.c_flags = core_build_spec(self.dir)

    def path(self, rel: str) -> str:
        return os.path.join(self.dir, rel)

    def check_import(self) -> None:
        out = subprocess.run([sys.executable, "-c", "import fedtiny, fedtiny._core, fedtiny._wire; print(fedtiny.__file__)"],
                             capture_output=True, text=True, env=self.env, cwd=self.dir, check=True).stdout.strip()
        if not out.startswith(self.dir):
            raise SystemExit(f"run.py: error: the tests would import {out}, not the scratch copy")

    # -- rebuilding the C modules ------------------------------------------------------------
    def _csrc(self) -> list[str]:
        return [self.path(f) for f in self.c_sources]

    def _compile_c(self, src: str, obj: str) -> None:
        includes = [a for d in self.c_includes for a in ("-I", self.path(d))]
        subprocess.run(["gcc", *self.c_flags, *includes, "-c", src, "-o", obj], check=True,
                       capture_output=True, text=True)

    def _obj(self, src: str) -> str:
        return os.path.join(self.build, os.path.relpath(src, self.dir).replace(os.sep, "_") + ".o")

    def prepare_core(self) -> None:
        """Once, before any mutation is applied: every unmutated csrc/ object and the binding."""
        import pybind11
        log("compiling the unmutated csrc/ objects and the pybind11 binding once")
        for src in self._csrc():
            self._compile_c(src, self._obj(src))
        includes = [a for d in self.c_includes for a in ("-I", self.path(d))]
        subprocess.run(["g++", "-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden", *includes,
                        "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"], "-c",
                        self.path("csrc/bind.cpp"), "-o", os.path.join(self.build, "bind.o")], check=True)
        self._objects_ready = True

    def rebuild_core(self, mutated: str | None) -> None:
        assert self._objects_ready, "prepare_core() must run before the first mutation"
        objs = []
        for src in self._csrc():
            if mutated is not None and (mutated.endswith(".h") or os.path.samefile(src, self.path(mutated))):
                obj = os.path.join(self.build, "mutant_" + os.path.basename(self._obj(src)))
                self._compile_c(src, obj)
                objs.append(obj)
            else:
                objs.append(self._obj(src))
        subprocess.run(["g++", "-shared", os.path.join(self.build, "bind.o"), *objs, "-o",
                        self.path("fedtiny/" + self.modules["_core"])], check=True)

    def rebuild_wire(self) -> None:
        # cffi compiles in tmpdir with the build script's paths relative to the checkout; and it reads a
        # pyproject.toml in its working directory: build in a directory that holds only firmware_bridge/
        work = os.path.join(self.build, "wire")
        if not os.path.isdir(work):
            os.makedirs(os.path.join(work, "fedtiny"))
            os.symlink(self.path("firmware_bridge"), os.path.join(work, "firmware_bridge"))
        code = ("import sys; sys.path.insert(0, 'firmware_bridge'); from wire_build import ffibuilder; "
                "print(ffibuilder.compile(tmpdir='.'))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, check=True)
        built = os.path.join(work, out.stdout.strip().splitlines()[-1])
        shutil.copy2(built, self.path("fedtiny/" + self.modules["_wire"]))

    def restore_modules(self) -> None:
        for name in self.modules.values():
            shutil.copy2(os.path.join(self.build, name), self.path("fedtiny/" + name))

    def pytest(self, tests: list[str]) -> tuple[int, str, float]:
        t0 = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "-o", "addopts=--strict-markers", "--benchmark-disable", *tests],
                                  capture_output=True, text=True, cwd=self.dir, env=self.env, timeout=TEST_TIMEOUT)
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            code, out = -1, f"timed out after {TEST_TIMEOUT} s"
        return code, out, time.monotonic() - t0


def apply(scratch: Scratch, m: dict) -> str:
    path = scratch.path(m["file"])
    with open(path) as f:
        text = f.read()
    n = text.count(m["old"])
    if n != m.get("count", 1):
        raise SystemExit(f"run.py: error: mutant {m['id']}: {m['old']!r} occurs {n} times in {m['file']}, "
                         f"expected {m.get('count', 1)}: update tests/mutation/mutants.py")
    with open(path, "w") as f:
        f.write(text.replace(m["old"], m["new"]))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    ids = [m["id"] for m in MUTANTS]
    assert len(set(ids)) == len(ids), "duplicate mutant id"
    chosen = [m for m in MUTANTS if not args.only or m["id"] in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"run.py: error: unknown mutant id(s): {sorted(set(args.only) - set(ids))}")
    if args.list:
        for m in chosen:
            log(f"{m['id']:28s} {m['file']:32s} {m['why']}")
        return 0
    t_start = time.monotonic()
    scratch = Scratch(ROOT)
    try:
        scratch.check_import()
        baseline = sorted({t for m in chosen for t in m["tests"]})
        log(f"baseline: {len(baseline)} test selections on the unmutated copy in {scratch.dir}")
        code, out, secs = scratch.pytest(baseline)
        if code != 0:
            log(out[-3000:])
            raise SystemExit(f"run.py: error: the tests fail on the unmutated copy ({secs:.0f} s): fix that first")
        log(f"baseline passed in {secs:.1f} s")
        # Controls: the modules rebuilt the way mutants are rebuilt, from unmutated sources, must pass
        # the tests of those mutants (else a broken rebuild would count every C mutant as caught).
        controls = [("csrc/", scratch.rebuild_core, None),
                    ("firmware_bridge/", lambda _: scratch.rebuild_wire(), None)]
        for prefix, rebuild, arg in controls:
            tests = sorted({t for m in chosen if m["file"].startswith(prefix) and m.get("rebuild_wire", True)
                            for t in m["tests"]})
            if not tests:
                continue
            if prefix == "csrc/":
                scratch.prepare_core()   # from the unmutated sources: a mutant must never leak into them
            rebuild(arg)
            code, out, secs = scratch.pytest(tests)
            scratch.restore_modules()
            if code != 0:
                log(out[-3000:])
                raise SystemExit(f"run.py: error: the {prefix} rebuild without a mutation fails its tests")
            log(f"control: {prefix} rebuilt unmutated, its mutants' tests pass ({secs:.1f} s)")
        rows = []
        for m in chosen:
            original = apply(scratch, m)
            try:
                if m["file"].startswith("csrc/"):
                    scratch.rebuild_core(m["file"])
                elif m["file"].startswith("firmware_bridge/") and m.get("rebuild_wire", True):
                    scratch.rebuild_wire()
                code, out, secs = scratch.pytest(m["tests"])
            except subprocess.CalledProcessError as exc:
                code, out, secs = -2, f"build failed: {exc.stderr or exc}", 0.0
                log(out[-2000:])
            finally:
                with open(scratch.path(m["file"]), "w") as f:
                    f.write(original)
                scratch.restore_modules()
            verdict = {1: "caught", 2: "caught (collection error)", -1: "caught (timeout)", -2: "BUILD FAILED"}.get(code, f"NOT CAUGHT (pytest {code})")
            if code == 1:
                failed = [line.split(" - ")[0] for line in out.splitlines() if line.startswith("FAILED")]
                verdict += f": {failed[0][7:] if failed else 'error'}"
            rows.append((m, verdict, secs))
            log(f"{m['id']:28s} {secs:6.1f} s  {verdict}")
        caught = sum(1 for _, v, _ in rows if v.startswith("caught"))
        total_s = time.monotonic() - t_start
        log(f"\n{caught} of {len(rows)} mutants caught; {total_s:.0f} s in all (baseline included)")
        for m, v, _ in rows:
            if not v.startswith("caught"):
                log(f"  {m['id']}: {v} -- {m['file']}: {m['why']}")
        return 0 if caught == len(rows) else 1
    finally:
        if args.keep:
            log(f"scratch kept: {scratch.dir}")
        else:
            shutil.rmtree(scratch.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
