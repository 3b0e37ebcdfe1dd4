"""Property-based checks of the codec (hypothesis): any finite float32 vector round-trips within
half a step per block; any byte string given to from_bytes is either a valid update or a
ValueError, never a crash."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedtiny import codec

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=float(np.float32(-1e30)),
                      max_value=float(np.float32(1e30)))


@settings(max_examples=300, deadline=None)
@given(arrays(np.float32, st.integers(1, 700), elements=finite_f32))
def test_round_trip_within_half_step(x):
    u = codec.encode(x)
    back = codec.Int8Update.from_bytes(u.to_bytes()).decode()
    xb = np.zeros(codec.nblocks(x.size) * codec.QK, np.float64)
    xb[: x.size] = x
    amax = np.abs(xb.reshape(-1, codec.QK)).max(axis=1)
    step = np.repeat(np.where(amax < 1e-30, 0, amax / 127.0), codec.QK)[: x.size]
    tiny = np.repeat(amax < 1e-30, codec.QK)[: x.size]  # such blocks are sent as zeros
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= step * (0.5 + 1e-6) + np.where(tiny, 1e-30, 0))


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_from_bytes_never_crashes_on_garbage(data):
    try:
        u = codec.Int8Update.from_bytes(data)
    except ValueError:
        return
    assert u.to_bytes() == data  # accepted only if it is exactly a valid encoding's size


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16 + 132, max_size=16 + 132 * 3), st.integers(1, 384))
def test_from_bytes_with_valid_header_and_random_blocks(body, n):
    header = codec.HEADER.pack(codec.MAGIC, codec.VERSION, 0, codec.QK, n, 0)
    data = header + body[: codec.nblocks(n) * codec.BLOCK_BYTES]
    try:
        u = codec.Int8Update.from_bytes(data)
    except ValueError:
        return
    out = u.decode()
    assert out.shape == (n,) and np.all(np.isfinite(out))
