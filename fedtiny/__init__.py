"""fedtiny: federated learning (FedAvg) for memory-limited edge boards."""
import os as _os

from . import _core

__version__ = "0.1.0"


def simd_info() -> str:
    """Name of the SIMD path the C kernels use now: scalar, avx2, avx512 or neon."""
    return _core.simd_info()


def simd_available() -> list[str]:
    """SIMD paths this CPU and build can run."""
    return list(_core.simd_available())


def set_simd(name: str) -> None:
    """Select the SIMD path for every kernel (FEDTINY_SIMD does this at import)."""
    _core.set_simd(name)


_requested = _os.environ.get("FEDTINY_SIMD", "").strip().lower()
if _requested and _requested != "auto":
    try:
        _core.set_simd(_requested)
    except ValueError as exc:
        raise ImportError(f"FEDTINY_SIMD={_requested!r}: {exc}") from None

__all__ = ["simd_info", "simd_available", "set_simd", "__version__"]
