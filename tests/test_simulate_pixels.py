"""Simulation memory (issue 16): images kept as uint8 pixels and converted as they are used give
the same float32 values, hence the same run bit for bit, as the float32 data set; the oracle is the
float32 path itself on the real Fashion-MNIST files."""
import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from fedtiny import datasets, simulate
from fedtiny.simulate import SimConfig

HAVE_FMNIST = os.path.isdir(datasets.DEFAULT_DIRS["fashion-mnist"])
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def both():
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return datasets.load("fashion-mnist"), datasets.load("fashion-mnist", pixels="uint8")


def test_pixels_convert_to_the_float32_values_bit_for_bit(both):
    f32, u8 = both
    assert u8.x_train.dtype == np.uint8 and u8.x_train.nbytes * 4 == f32.x_train.nbytes
    assert u8.pixel_max == 255.0 and f32.pixel_max is None
    for a, b in ((f32.x_train, u8.floats(u8.x_train)), (f32.x_test, u8.floats(u8.x_test))):
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    np.testing.assert_array_equal(u8.y_train, f32.y_train)


def test_every_pixel_value_against_exact_division():
    v = np.arange(256)
    got = datasets.pixels_to_float(v.astype(np.uint8), 255.0)
    # float32 division is correctly rounded: the nearest float32 to v/255, from float64 (v/255 is
    # never a float32 tie)
    assert np.array_equal(got, (v / 255.0).astype(np.float32))
    # a multiply by the float32 nearest 1/255 (what the C kernel ft_train_sgd_u8 does) is not the same
    assert (v.astype(np.float32) * np.float32(1 / 255) != got).sum() > 100


@needs_fmnist
def test_simulation_on_pixels_equals_the_float32_run(both):
    f32, u8 = both
    # test_limit 5000: more than one EVAL_ROWS slice, the last one partial
    cfg = dict(dataset="fashion-mnist", model="2nn", clients=100, fraction=0.05, rounds=2, test_limit=5000,
               codec="int8-stochastic")
    a = simulate.run(SimConfig(**cfg), data=f32)
    b = simulate.run(SimConfig(**cfg), data=u8)
    assert np.array_equal(a.params.view(np.uint32), b.params.view(np.uint32))
    for ra, rb in zip(a.rounds, b.rounds):
        for key in ("train_loss", "test_loss", "test_acc", "fed_loss", "fed_acc"):
            assert ra[key] == rb[key], key
    assert 5000 % simulate.EVAL_ROWS != 0


def test_npz_pixels_kept_and_float_files_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 16, (40, 8, 8), dtype=np.int64)
    y = rng.integers(0, 3, 40)
    np.savez(tmp_path / "ints.npz", x=x, y=y, pixel_max=16.0)
    np.savez(tmp_path / "floats.npz", x=(x / 16.0).astype(np.float32), y=y)
    kept = datasets.load(str(tmp_path / "ints.npz"), pixels="uint8")
    flt = datasets.load(str(tmp_path / "ints.npz"))
    assert kept.x_train.dtype == np.uint8 and kept.pixel_max == 16.0
    assert np.array_equal(kept.floats(kept.x_test), flt.x_test)
    f = datasets.load(str(tmp_path / "floats.npz"), pixels="uint8")   # floats stay floats
    assert f.pixel_max is None and f.x_train.dtype == np.float32 and f.floats(f.x_train) is f.x_train
    with pytest.raises(ValueError, match="pixels must be one of float32, uint8"):
        datasets.load("digits", pixels="u8")


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def test_read_idx_streams_in_parts_and_refuses_extra_or_missing_bytes(tmp_path, monkeypatch):
    a = np.arange(3 * 50 * 7, dtype=np.uint8).reshape(3, 50, 7)
    monkeypatch.setattr(datasets, "READ_BYTES", 64)    # many parts, the last one short
    for name, data in (("raw", _idx(a)), ("gz", gzip.compress(_idx(a)))):
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / name)), a)
    (tmp_path / "long").write_bytes(_idx(a) + b"\0")
    with pytest.raises(ValueError, match=r"1067\+ bytes, an IDX array of shape \(3, 50, 7\) needs 1066"):
        datasets.read_idx(str(tmp_path / "long"))
    (tmp_path / "short.gz").write_bytes(gzip.compress(_idx(a)[:-5]))
    with pytest.raises(ValueError, match="needs 1066"):
        datasets.read_idx(str(tmp_path / "short.gz"))
    (tmp_path / "cut.gz").write_bytes(gzip.compress(_idx(a))[:-12])
    with pytest.raises(ValueError, match="corrupt gzip"):
        datasets.read_idx(str(tmp_path / "cut.gz"))


# A launcher that imports nothing big: Linux carries a process's peak across exec into the child's
# ru_maxrss, so the command is started from this small process, not from pytest (which holds the data).
PEAK_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
                 "_, status, ru = os.wait4(p.pid, 0); print(os.waitstatus_to_exitcode(status), ru.ru_maxrss)")


@needs_fmnist
def test_the_100_client_simulation_never_holds_float32_images(tmp_path):
    """The float32 training and test images alone are 219 MB (60,000 + 10,000 x 784 x 4 bytes): a
    whole `fedtiny simulate` process of McMahan's setting under 150 MB cannot hold them. The
    figure itself comes from bench/simulate_rss.py."""
    cmd = [sys.executable, "-m", "fedtiny.cli", "simulate", "--dataset", "fashion-mnist", "--model", "2nn",
           "--clients", "100", "--fraction", "0.1", "--rounds", "2", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", PEAK_LAUNCHER, *cmd], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    code, peak_kib = map(int, proc.stdout.split())
    assert code == 0, proc.stderr
    assert 20e6 < peak_kib * 1024 < 150e6, peak_kib     # 20 MB: it did measure a Python with numpy
