"""fedtiny.npz (a device's .npz reader without zipfile) against np.load, the oracle: the same
arrays for every layout np.savez / np.savez_compressed write, one clear ValueError for each bad
file, and a device process that loads its data without importing zipfile."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fedtiny import npz


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.random((7, 5), dtype=np.float32),
        "f64": rng.random(11),
        "i64": rng.integers(-9, 9, (3, 4, 2)),
        "u8": rng.integers(0, 255, (6, 28, 28, 1), dtype=np.uint8),
        "be": rng.random((4, 3)).astype(">f4"),
        "fortran": np.asfortranarray(rng.random((5, 3), dtype=np.float32)),
        "scalar": np.float32(2.5).reshape(()),
        "empty": np.zeros((0, 784), np.float32),
        "flag": rng.random(9) > 0.5,
    }


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_same_arrays_as_np_load(tmp_path, save):
    path = str(tmp_path / "d.npz")
    arrays = _arrays()
    save(path, **arrays)
    got = npz.read(path, tuple(arrays))
    with np.load(path, allow_pickle=False) as ref:
        for name in arrays:
            want = ref[name]
            assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
            assert np.array_equal(got[name], want), name
            assert got[name].flags.f_contiguous == want.flags.f_contiguous, name
            assert not got[name].flags.writeable      # a view of the bytes read: no second copy


def test_optional_names(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, x=np.arange(3), y=np.arange(3), x_test=np.arange(2))
    got = npz.read(path, ("x", "y"), optional=("x_test", "y_test"))
    assert sorted(got) == ["x", "x_test", "y"] and got["x_test"].tolist() == [0, 1]


def test_a_rewritten_file_is_read_as_it_is_now(tmp_path):
    # zipimport keeps a directory per path: a file written again under the same name must not be
    # read through the old directory (offsets and sizes of the old members)
    path = str(tmp_path / "d.npz")
    np.savez(path, x=np.arange(4), y=np.zeros(1))
    assert npz.read(path, ("x",))["x"].tolist() == [0, 1, 2, 3]
    np.savez(path, pad=np.zeros(1000), x=np.arange(10, 13), y=np.ones(2))
    assert npz.read(path, ("x", "y"))["x"].tolist() == [10, 11, 12]


def _zip_with(tmp_path, name, payload):
    path = str(tmp_path / "bad.npz")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, payload)
    return path


def _npy_bytes(a, **kw):
    import io
    f = io.BytesIO()
    np.lib.format.write_array(f, a, **kw)
    return f.getvalue()


@pytest.mark.parametrize("make,match", [
    (lambda t: str(t / "missing.npz"), "cannot read .*No such file"),
    (lambda t: (t / "r.npz").write_bytes(os.urandom(100)) and str(t / "r.npz"), "not an .npz file"),
    (lambda t: (np.save(t / "a.npy", np.arange(3)), str(t / "a.npy"))[1], "not an .npz file"),
    (lambda t: (t / "e.npz").write_bytes(b"") or str(t / "e.npz"), "not an .npz file"),
    (lambda t: (np.savez(t / "o.npz", x=np.arange(2)), str(t / "o.npz"))[1], "must hold arrays 'x', 'y'.*no 'y'"),
    (lambda t: (np.savez(t / "p.npz", x=np.array([{}, 1], dtype=object), y=np.arange(2)), str(t / "p.npz"))[1],
     "holds Python objects"),
    (lambda t: _zip_with(t, "x.npy", _npy_bytes(np.arange(100, dtype=np.float32))[:-8]), "needs 400 bytes, the file holds 392"),
    (lambda t: _zip_with(t, "x.npy", b"\x93NUMPY\x01\x00garbage"), "array 'x'"),
    (lambda t: _zip_with(t, "x.npy", _npy_bytes(np.arange(3), version=(3, 0))), "version 3.0"),
    (lambda t: (t / "h.npz").write_bytes(b"PK\x03\x04" + os.urandom(60)) and str(t / "h.npz"), "cannot read"),
])
def test_bad_files_are_one_value_error(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=match):
        npz.read(path, ("x", "y") if "must hold" in match else ("x",))


def test_trailing_bytes_after_an_array_are_ignored_as_np_load_does(tmp_path):
    path = _zip_with(tmp_path, "x.npy", _npy_bytes(np.arange(5, dtype=np.int16)) + b"\0" * 6)
    with np.load(path) as ref:
        assert npz.read(path, ("x",))["x"].tolist() == ref["x"].tolist() == [0, 1, 2, 3, 4]


def test_a_device_loads_its_data_without_zipfile(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, x=np.zeros((4, 64), np.float32), y=np.arange(4))
    code = ("import sys\nfrom fedtiny import model\nfrom fedtiny.net.common import load_data\n"
            f"x, y = load_data({path!r}, model.build('mlp:64-10'))\n"
            "print(x.shape, y.tolist(), sorted(m for m in ('zipfile', 'shutil', 'lzma', 'bz2') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "(4, 64) [0, 1, 2, 3] []"
