"""Build: the C kernels (csrc/) as one static library linked into the pybind11 module fedtiny._core.

SIMD bodies are compiled with per-function target attributes and chosen at run time
(csrc/dispatch.c), so no -march flag is ever passed: one build runs on any CPU of its
architecture.
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
# ft_chacha20.c is the project's one ChaCha20 (firmware_bridge/ft_crypto.h): the mask and rounding
# streams of the secure-aggregation kernels are its scalar reference.
C_SOURCES = sorted(glob.glob("csrc/*.c") + glob.glob("csrc/arch/*.c")) + ["firmware_bridge/ft_chacha20.c"]
# -ffp-contract=off: no silent fused multiply-add, so the scalar and SIMD paths round identically.
C_FLAGS = ["-std=c99", "-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wextra", "-fPIC"]

libraries = [("ftkernels", {"sources": C_SOURCES, "include_dirs": ["csrc", "firmware_bridge"], "cflags": C_FLAGS})]

ext_modules = [
    Pybind11Extension(
        "fedtiny._core",
        ["csrc/bind.cpp"],
        include_dirs=["csrc"],
        libraries=["ftkernels"],
        cxx_std=17,
        extra_compile_args=["-O2"],
    ),
]

cffi_modules = []
if os.path.exists(os.path.join(HERE, "firmware_bridge", "wire_build.py")):
    cffi_modules.append("firmware_bridge/wire_build.py:ffibuilder")

setup(libraries=libraries, ext_modules=ext_modules, cffi_modules=cffi_modules)
