import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from ci_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401  (CI=true: skips fail)

# Single-threaded baselines: numpy/OpenBLAS and PyTorch must not use the second core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
