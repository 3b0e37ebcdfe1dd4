"""Where DP noise gets its randomness: the OS's cryptographic generator, never a run seed.

A reproducible seed would let anyone who knows it subtract the noise. Tests pass their own
seeded source explicitly; nothing here falls back to one.
"""
from __future__ import annotations

import os
import secrets
from typing import Callable

import numpy as np

ByteSource = Callable[[int], bytes]


def os_bytes(n: int) -> bytes:
    """n bytes from the OS CSPRNG (getrandom on Linux)."""
    return os.urandom(n)


def secure_generator() -> np.random.Generator:
    """A numpy Generator (PCG64) seeded with 128 bits from the OS CSPRNG: central DP's Gaussian noise.
    PCG64 is not itself a CSPRNG; the noise is released only inside the sum the trusted aggregator
    publishes, where an observer cannot see its stream."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))
