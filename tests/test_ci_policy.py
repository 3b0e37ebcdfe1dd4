"""CI=true turns a skip for a missing tool into a failure (tests/ci_policy.py); `optional` tests may
still skip; without CI the same tests skip. Run on a throw-away test file in a pytest subprocess."""
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

CASES = '''
import pytest

def test_missing_tool():
    pytest.skip("arm-none-eabi-gcc is not installed")

@pytest.mark.skipif(True, reason="Fashion-MNIST not installed")
def test_missing_dataset():
    pass

@pytest.mark.optional
def test_torch_baseline():
    pytest.importorskip("a_module_that_is_not_there")

def test_passes():
    pass
'''


def run(tmp_path, ci: str | None, body: str = CASES):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\n"
        "from ci_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"
        "def pytest_configure(config):\n    config.addinivalue_line('markers', 'optional: may skip')\n")
    (tmp_path / "test_cases.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-o", "addopts=",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    return proc


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_skips_fail_under_ci(tmp_path, ci):
    proc = run(tmp_path, ci)
    assert proc.returncode == 1, proc.stdout
    # a skip in the call fails the test; a skipif (decided at setup) is an error: both fail the run
    assert "1 failed, 1 passed, 1 skipped, 1 error" in proc.stdout, proc.stdout
    assert "FAILED test_cases.py::test_missing_tool" in proc.stdout
    assert "ERROR test_cases.py::test_missing_dataset" in proc.stdout
    assert "arm-none-eabi-gcc is not installed" in proc.stdout
    assert "SKIPPED [1] test_cases.py" in proc.stdout   # the optional one


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_skips_stay_skips_outside_ci(tmp_path, ci):
    proc = run(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped" in proc.stdout, proc.stdout


def test_module_level_skip_fails_under_ci(tmp_path):
    body = "import pytest\npytest.importorskip('a_module_that_is_not_there')\n\ndef test_x():\n    pass\n"
    failed = run(tmp_path, "true", body)
    assert failed.returncode == 2 and "1 error" in failed.stdout, failed.stdout      # collection error
    skipped = run(tmp_path, None, body)
    assert skipped.returncode == 5 and "1 skipped" in skipped.stdout, skipped.stdout  # nothing ran, nothing failed
