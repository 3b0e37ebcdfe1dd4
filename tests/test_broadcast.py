"""The compressed model download: the aggregator's reference copy is what every device decodes,
bit for bit; error feedback on the aggregator loses nothing; `fedtiny simulate` counts the bytes
that cross in each direction."""
import numpy as np
import pytest

from fedtiny import broadcast, codec, datasets, simulate
from fedtiny.simulate import SimConfig

DIGITS = dict(dataset="digits", model="mlp:64-32-10", clients=20, fraction=0.5, epochs=2, batch=10, lr=0.2)


@pytest.mark.parametrize("down", broadcast.DOWN_CODECS)
def test_reference_is_what_devices_decode_and_error_feedback_loses_nothing(rng, down):
    n = 10_007
    w = (rng.standard_normal(n) * 0.05).astype(np.float32)
    link = broadcast.Broadcaster(down, n)
    sum_ref = np.zeros(n, np.float64)
    sum_w = np.zeros(n, np.float64)
    for _ in range(20):
        w += (rng.standard_normal(n) * 1e-3).astype(np.float32)  # a round's step
        ref = link.publish(w)
        device = broadcast.receive(link.to_bytes(), n, down)
        np.testing.assert_array_equal(device, ref)  # bit for bit
        sum_ref += ref
        sum_w += w
    want = {"float32": 4 * n, "int8": codec.wire_size(n), "int4": codec.LOWBIT_FORMATS["int4"].wire_size(n)}[down]
    assert link.message_bytes == want == len(link.to_bytes())
    if down != "float32":
        # sum of what devices got + the aggregator's residual == sum of the aggregator's models
        np.testing.assert_allclose(sum_ref + link._residual, sum_w, atol=2e-5)
        step = np.abs(w).max() / (127 if down == "int8" else 7)
        assert np.abs(link._residual).max() <= step  # bounded, not growing


def test_receive_refuses_what_is_not_this_devices_model(rng):
    n = 300
    link = broadcast.Broadcaster("int8", n)
    link.publish(rng.standard_normal(n).astype(np.float32))
    data = link.to_bytes()
    with pytest.raises(ValueError, match="expects int4"):
        broadcast.receive(data, n, "int4")
    with pytest.raises(ValueError, match="301"):
        broadcast.receive(data, 301, "int8")
    with pytest.raises(ValueError, match="truncated"):
        broadcast.receive(data[:-1], n, "int8")
    with pytest.raises(ValueError, match="float32 model download"):
        broadcast.receive(data, n, "float32")
    with pytest.raises(ValueError, match="--down-codec"):
        broadcast.Broadcaster("int2", n)


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


@pytest.mark.parametrize("up,down", [("int4-ef", "int8"), ("1bit-rot-ef", "float32"), ("int2-stochastic", "int4"),
                                     ("int8", "int8")])
def test_simulate_counts_the_bytes_that_cross(digits, up, down):
    res = simulate.run(SimConfig(**DIGITS, rounds=3, codec=up, down_codec=down), data=digits)
    n = res.summary["n_params"]
    fmt = up.split("-stochastic")[0].split("-ef")[0]
    up_bytes = codec.wire_size(n) if fmt == "int8" else codec.LOWBIT_FORMATS[fmt].wire_size(n)
    down_bytes = {"float32": 4 * n, "int8": codec.wire_size(n), "int4": codec.LOWBIT_FORMATS["int4"].wire_size(n)}[down]
    for row in res.rounds:
        assert row["upload_bytes"] == row["clients"] * up_bytes
        assert row["download_bytes"] == row["clients"] * down_bytes
    assert res.summary["final_test_acc"] > 0.5  # it learns (chance is 0.1)
    if down != "float32":
        assert res.summary["final_device_test_acc"] > 0.5


def test_int8_download_ends_close_to_float32(digits):
    f = simulate.run(SimConfig(**DIGITS, rounds=15), data=digits).summary["final_test_acc"]
    q = simulate.run(SimConfig(**DIGITS, rounds=15, down_codec="int8"), data=digits).summary["final_test_acc"]
    assert abs(f - q) < 0.03, (f, q)


def test_compressed_download_composes_with_secagg(digits):
    """The download is not masked: --secagg runs with --down-codec int8 and counts its bytes;
    a sub-byte upload codec is refused with --secagg (the masked update is the shared grid)."""
    cfg = SimConfig(**DIGITS, rounds=2, secagg=True, clip_norm=5.0, down_codec="int8")
    res = simulate.run(cfg, data=digits)
    n = res.summary["n_params"]
    for row in res.rounds:
        assert row["download_bytes"] == 10 * codec.wire_size(n)  # 10 sampled devices, all with data
    with pytest.raises(ValueError, match="does not apply with --secagg"):
        SimConfig(**DIGITS, secagg=True, clip_norm=5.0, codec="int4-ef").check()
