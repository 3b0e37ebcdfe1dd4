"""Shared test inputs for the kernel tests (imported by name; conftest.py is not importable
when tests/ and bench/ run together)."""
import fedtiny

# Odd lengths around the vector widths and the 128-value block, plus one large size.
ODD_LENGTHS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 127, 128, 129, 255, 257, 511, 513,
               1023, 1025, 200_003]
SIMD_PATHS = fedtiny.simd_available()
