"""The package's shape (docs/layout.md): programs never import each other, a device process
stays small, and derive_seed without numpy.random is numpy's SeedSequence bit for bit."""
import ast
import os
import subprocess
import sys

import numpy as np
import pytest

import fedtiny
from fedtiny.seeds import derive_seed

PKG = os.path.dirname(fedtiny.__file__)
# The programs: modules with a `run_command` that the CLI runs.
PROGRAMS = {"fedtiny.simulate", "fedtiny.net.aggregator", "fedtiny.net.client", "fedtiny.net.bridge",
            "fedtiny.net.demo", "fedtiny.tflite.export", "fedtiny.flower.fleet"}
# demo composes an aggregator and client processes (it starts clients as subprocesses); the
# Flower fleet is the aggregator with its rounds taken from a Flower federation.
ALLOWED = {("fedtiny.net.demo", "fedtiny.net.aggregator"), ("fedtiny.flower.fleet", "fedtiny.net.aggregator")}


def _module_files():
    for root, _dirs, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path, f == "__init__.py"


def _fedtiny_imports(name: str, path: str, is_package: bool) -> set[str]:
    """Every fedtiny module a module imports (top level or inside functions), relative ones resolved."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fedtiny")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("fedtiny"):
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import aggregator` names a module
    return found


def test_the_import_walk_sees_relative_and_function_level_imports():
    # The oracle for the rule below: modules known to import these.
    got = _fedtiny_imports("fedtiny.net.client", os.path.join(PKG, "net", "client.py"), False)
    assert {"fedtiny.seeds", "fedtiny.net.wire", "fedtiny.train", "fedtiny.tflite"} <= got
    got = _fedtiny_imports("fedtiny.net.demo", os.path.join(PKG, "net", "demo.py"), False)
    assert "fedtiny.net.aggregator" in got


def test_no_program_imports_another_program():
    modules = list(_module_files())
    assert PROGRAMS <= {m for m, _p, _i in modules}, "a program module moved: update PROGRAMS and docs/layout.md"
    offenders = []
    for name, path, is_pkg in modules:
        if name not in PROGRAMS:
            continue
        for imported in _fedtiny_imports(name, path, is_pkg) & PROGRAMS:
            if imported != name and (name, imported) not in ALLOWED:
                offenders.append(f"{name} imports {imported}")
    assert not offenders, "programs share code through modules below them (fedtiny.net.common, fedtiny.seeds, ...): " + "; ".join(offenders)


def test_library_modules_import_no_program():
    offenders = [f"{name} imports {imp}" for name, path, is_pkg in _module_files() if name not in PROGRAMS
                 and name not in ("fedtiny.cli",)
                 for imp in _fedtiny_imports(name, path, is_pkg) & PROGRAMS]
    assert not offenders, "; ".join(offenders)


def test_a_device_process_imports_neither_the_simulation_nor_numpy_random():
    # The real CLI path of a device up to argument parsing, plus what the client imports to train.
    code = ("import sys\n"
            "from fedtiny import cli\n"
            "try:\n    cli.main(['client', '--help'])\nexcept SystemExit:\n    pass\n"
            "import fedtiny.model, fedtiny.train, fedtiny.net.keys\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('fedtiny', 'numpy.random')))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    loaded = set(out.split()[-1:] and out.splitlines()[-1].split())
    assert "fedtiny.net.client" in loaded  # the check looked at a real client import
    assert not loaded & (PROGRAMS - {"fedtiny.net.client"}), loaded
    assert not {m for m in loaded if m.startswith("numpy.random")}, loaded


def _seedsequence(*parts):
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


@pytest.mark.parametrize("n_parts", [1, 2, 3, 4, 5, 7])
def test_derive_seed_is_numpy_seedsequence_bit_for_bit(n_parts):
    rng = np.random.default_rng(n_parts)
    for _ in range(200):
        parts = [int(v) for v in rng.integers(-2**40, 2**40, n_parts)]
        parts[0] = int(rng.choice([0, 1, 2**32 - 1, parts[0]]))
        assert derive_seed(*parts) == _seedsequence(*parts), parts


def test_derive_seed_needs_a_part():
    with pytest.raises(ValueError, match="at least one"):
        derive_seed()
