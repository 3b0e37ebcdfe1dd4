"""Shamir secret sharing for SecAgg+ (docs/secagg.md "Shamir"): the firmware's C implementation
(firmware_bridge/ft_shamir.c, GF(2^8) byte by byte, constant time) through fedtiny._wire, so the
Raspberry Pi, the desktop and a microcontroller split and combine with the same code.

A share is bytes: [x (1..255)] + one byte per secret byte. Any t shares give the secret; fewer
give a wrong value (a share does not carry t, so combine cannot tell).
"""
import os

from fedtiny import _wire

_ffi, _lib = _wire.ffi, _wire.lib
MAX_SHARES = int(_lib.FT_SHAMIR_MAX_SHARES)


def split(secret: bytes, n: int, t: int, random: bytes | None = None) -> list[bytes]:
    """n shares of `secret` (x = 1..n), any t of which recover it. `random`: (t - 1) * len(secret)
    uniform bytes for the coefficients (os.urandom when None; tests pass their own)."""
    if not 1 <= t <= n <= MAX_SHARES:
        raise ValueError(f"Shamir split needs 1 <= t <= n <= {MAX_SHARES}, got n={n}, t={t}")
    size = len(secret)
    need = (t - 1) * size
    rnd = os.urandom(need) if random is None else bytes(random)
    if len(rnd) != need:
        raise ValueError(f"Shamir split needs {need} random bytes ((t - 1) * len(secret)), got {len(rnd)}")
    out = _ffi.new("uint8_t[]", n * (size + 1))
    st = _lib.ft_shamir_split(secret, size, n, t, rnd if need else _ffi.NULL, out)
    if st != _lib.FT_WIRE_OK:
        raise ValueError(f"Shamir split failed: {_ffi.string(_lib.ft_wire_status_name(st)).decode()}")
    raw = bytes(_ffi.buffer(out))
    _lib.ft_zeroize(out, len(raw))
    return [raw[i * (size + 1):(i + 1) * (size + 1)] for i in range(n)]


def combine(shares: list[bytes]) -> bytes:
    """The secret from t shares of equal length (any order). ValueError for shares of different
    lengths, an x of 0, or two shares with the same x."""
    if not shares:
        raise ValueError("Shamir combine needs at least one share")
    size = len(shares[0]) - 1
    if size < 0 or any(len(s) != size + 1 for s in shares):
        raise ValueError("Shamir shares must all have the same length (1 + secret length)")
    if len(shares) > MAX_SHARES:
        raise ValueError(f"at most {MAX_SHARES} shares, got {len(shares)}")
    xs = [s[0] for s in shares]
    if 0 in xs or len(set(xs)) != len(xs):
        raise ValueError(f"Shamir shares need distinct nonzero x, got {sorted(xs)}")
    out = _ffi.new("uint8_t[]", max(size, 1))
    st = _lib.ft_shamir_combine(b"".join(shares), len(shares), size, out)
    if st != _lib.FT_WIRE_OK:
        raise ValueError(f"Shamir combine failed: {_ffi.string(_lib.ft_wire_status_name(st)).decode()}")
    secret = bytes(_ffi.buffer(out, size))
    _lib.ft_zeroize(out, size)
    return secret
