"""Under CI=true a skip is a failure: CI installs every tool and dataset the tests need (.ci/run),
so a test that skips there because cc, make, arm-none-eabi-gcc, qemu, pyserial, a TFLite
interpreter or Fashion-MNIST is missing would hide a broken install. Locally the same tests skip
with the reason. The one exception is a test marked `optional` (PyTorch, a benchmark baseline that
CI does not install).

Used by tests/conftest.py and bench/conftest.py (one implementation)."""
from __future__ import annotations

import os

import pytest


# The checkout holds fedtiny/ as uncompiled source beside the installed package; a child Python
# started from the checkout (`python -m fedtiny.cli`, `python -c ...`) would put the current
# directory first on sys.path and import that source tree without its C extensions. Python 3.11's
# safe-path mode keeps the current directory off sys.path in every child the tests start.
os.environ.setdefault("PYTHONSAFEPATH", "1")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:   # (path, line, "Skipped: ...")
        return str(longrepr[2])
    return str(longrepr)


def _fail(report, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped under CI=true, where every required tool and dataset is installed: "
                       f"{_reason(report.longrepr)} (install it in .ci/run, or mark the test `optional`)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (in_ci() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("optional") is None):
        _fail(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:   # a module-level skip (importorskip of a required package)
        _fail(report, collector.nodeid)
