"""Checkpoint atomicity and resume; the keys file format and its errors."""
import json
import os

import numpy as np
import pytest

from fedtiny.net import keys, state


def test_checkpoint_round_trip_and_cleanup(tmp_path, rng):
    d = str(tmp_path / "st")
    assert state.load(d) is None
    for r in (1, 2):
        w = rng.standard_normal(1000).astype(np.float32)
        m = {"momentum": rng.standard_normal(1000).astype(np.float32)}
        state.save(d, state.Checkpoint(r, w, m, [{"round": i, "accuracy": 0.5} for i in range(1, r + 1)],
                                       {"model": "mlp:64-32-10"}))
    ck = state.load(d)
    assert ck.round == 2 and ck.config == {"model": "mlp:64-32-10"} and len(ck.metrics) == 2
    np.testing.assert_array_equal(ck.weights, w)
    np.testing.assert_array_equal(ck.optimizer["momentum"], m["momentum"])
    names = sorted(os.listdir(d))
    assert names == ["metrics.csv", "metrics.json", "optim-000002.npz", "state.json", "weights-000002.npy"]
    assert (tmp_path / "st" / "metrics.csv").read_text().splitlines()[0] == "round,accuracy"


def test_crash_before_commit_keeps_previous_round(tmp_path, rng, monkeypatch):
    d = str(tmp_path)
    w1 = rng.standard_normal(10).astype(np.float32)
    state.save(d, state.Checkpoint(1, w1))
    real = state.atomic_write

    def dies_at_commit(path, data):
        if path.endswith(state.STATE_FILE):
            raise OSError("killed")
        real(path, data)
    monkeypatch.setattr(state, "atomic_write", dies_at_commit)
    with pytest.raises(OSError):
        state.save(d, state.Checkpoint(2, w1 + 1))
    ck = state.load(d)
    assert ck.round == 1
    np.testing.assert_array_equal(ck.weights, w1)
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_corrupt_state_is_a_clear_error(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"format": 1, "round": 3, "weights": "missing.npy",
                                                     "optimizer": "missing.npz"}))
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        state.load(str(tmp_path))


def test_keys_file(tmp_path):
    text = keys.generate([1, 2, 7])
    p = tmp_path / "keys"
    keys.write_keys(str(p), "# fleet\n\n" + text)
    ks = keys.load_keys(str(p))
    assert sorted(ks) == [1, 2, 7] and all(len(k) == 32 for k in ks.values())
    assert keys.load_device_key(str(p), 7) == ks[7]
    with pytest.raises(ValueError, match="no key for device 3"):
        keys.load_device_key(str(p), 3)


@pytest.mark.parametrize("line,msg", [
    ("1", "expected 'device_id hexkey'"),
    ("x 00112233445566778899aabbccddeeff", "not a decimal integer"),
    ("4294967296 00112233445566778899aabbccddeeff", "outside 0"),
    ("1 zz112233445566778899aabbccddeeff", "not hexadecimal"),
    ("1 0011", "key of 2 bytes"),
    ("1 00112233445566778899aabbccddeeff\n1 00112233445566778899aabbccddeeff", "already has a key"),
])
def test_malformed_keys_line(line, msg):
    with pytest.raises(ValueError, match=msg) as exc:
        keys.parse_keys(line, "k.txt")
    assert "k.txt line" in str(exc.value)
