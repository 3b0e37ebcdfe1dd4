import numpy as np
import pytest

import fedtiny
from ci_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401  (CI=true: skips fail)


@pytest.fixture(autouse=True)
def _restore_simd():
    """A test may switch the SIMD path with fedtiny.set_simd; put the previous one back."""
    before = fedtiny.simd_info()
    yield
    fedtiny.set_simd(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
