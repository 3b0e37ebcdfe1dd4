"""Shamir secret sharing over GF(2^8), byte by byte (the field of AES, x^8 + x^4 + x^3 + x + 1).

A secret of L bytes is L independent sharings: byte j of the secret is p_j(0) of a random
polynomial p_j of degree t - 1, and the share of the holder at x-coordinate x (1..255) is the L
bytes p_j(x). Any t shares give the secret back by Lagrange interpolation at 0; t - 1 shares are
independent of it (each byte uniformly distributed whatever the secret).

INTERIM: this Python version stands until the C implementation of firmware_bridge (the one the
firmware runs, exposed as fedtiny._wire) lands; then this module calls it and this code moves to
tests/ as its oracle. It is not constant-time (table lookups indexed by secret bytes): a
device that must resist timing attacks runs the C one.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np

MAX_SHARES = 255  # x-coordinates 1..255: 0 is the secret itself

_EXP = [0] * 510
_LOG = [0] * 256


def _tables() -> None:
    v = 1
    for i in range(255):
        _EXP[i] = _EXP[i + 255] = v
        _LOG[v] = i
        v ^= (v << 1) ^ (0x11B if v & 0x80 else 0)  # v *= 3 (a generator of GF(2^8)*)
        v &= 0xFF


_tables()
_EXP_NP = np.array(_EXP, dtype=np.uint8)
_LOG_NP = np.array(_LOG, dtype=np.int32)


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    return 0 if a == 0 else _EXP[_LOG[a] + 255 - _LOG[b]]


def split(secret: bytes, xs: Sequence[int], threshold: int, *,
          random_bytes: Callable[[int], bytes] = os.urandom) -> list[bytes]:
    """The shares of `secret` for holders at x-coordinates xs (distinct, 1..255); any `threshold` rebuild it."""
    _check_xs(xs)
    if not 1 <= int(threshold) <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}] (the number of shares), got {threshold}")
    t, n = int(threshold), len(secret)
    coeffs = np.frombuffer(random_bytes((t - 1) * n), dtype=np.uint8).reshape(t - 1, n) if t > 1 else None
    log_x = np.array([_LOG[int(x)] for x in xs], dtype=np.int32)[:, None]
    acc = np.zeros((len(xs), n), dtype=np.uint8)  # row h: the polynomials at xs[h], every byte at once
    for i in range(t - 1, 0, -1):                 # Horner: ((c_{t-1} x + c_{t-2}) x + ... + c_1) x
        v = acc ^ coeffs[i - 1]
        acc = np.where(v == 0, 0, _EXP_NP[_LOG_NP[v] + log_x]).astype(np.uint8)
    acc ^= np.frombuffer(secret, dtype=np.uint8)  # + s
    return [row.tobytes() for row in acc]


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret from {x: share}; exactly the polynomial's value at 0 when len(shares) >= threshold."""
    xs = list(shares)
    _check_xs(xs)
    if not xs:
        raise ValueError("combine needs at least one share")
    lengths = {len(s) for s in shares.values()}
    if len(lengths) != 1:
        raise ValueError(f"shares of different lengths: {sorted(lengths)}")
    weights = []
    for i, xi in enumerate(xs):  # Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i), minus is xor
        w = 1
        for j, xj in enumerate(xs):
            if j != i:
                w = _mul(w, _div(xj, xj ^ xi))
        weights.append(w)
    pts = np.frombuffer(b"".join(shares[x] for x in xs), dtype=np.uint8).reshape(len(xs), -1)
    log_w = np.array([_LOG[w] for w in weights], dtype=np.int32)[:, None]  # weights are never 0
    terms = np.where(pts == 0, 0, _EXP_NP[_LOG_NP[pts] + log_w]).astype(np.uint8)
    return np.bitwise_xor.reduce(terms, axis=0).tobytes()


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError("share x-coordinates must be distinct")
    for x in xs:
        if not 1 <= int(x) <= MAX_SHARES:
            raise ValueError(f"share x-coordinate {x} is outside 1..{MAX_SHARES}")
