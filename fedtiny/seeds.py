"""Seeds for (run seed, round, client, purpose): independent, reproducible streams, without numpy.random.

`derive_seed` is the word-level hash of numpy's SeedSequence (O'Neill's seed_seq_fe: a 4-word
pool, hashmix/mix over the entropy words, then one output word), written on plain integers so a
device process need not import numpy.random; it returns exactly what
`np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF`
returns (tests/test_seeds.py checks it against numpy), so simulation and devices agree bit for bit.
"""
from __future__ import annotations

_M32 = 0xFFFFFFFF
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715


def _mix(x: int, y: int) -> int:
    r = (_MIX_L * x - _MIX_R * y) & _M32
    return r ^ (r >> 16)


def _pool(words: list[int]) -> list[int]:
    h = _INIT_A

    def hashmix(v: int) -> int:
        nonlocal h
        v ^= h
        h = (h * _MULT_A) & _M32
        v = (v * h) & _M32
        return v ^ (v >> 16)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(words)):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], hashmix(words[src]))
    return pool


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from (run seed, round, client, purpose): independent streams, reproducible."""
    if not parts:
        raise ValueError("derive_seed needs at least one part")
    v = _pool([int(p) & _M32 for p in parts])[0]
    v = (v ^ _INIT_B) & _M32
    v = (v * ((_INIT_B * _MULT_B) & _M32)) & _M32
    return (v ^ (v >> 16)) & 0x7FFFFFFF
