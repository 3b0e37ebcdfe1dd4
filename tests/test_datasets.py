"""Datasets: the IDX reader on files with known contents, the real Fashion-MNIST files, the bundled
digits, user .npz files, and the partitioners' promised label distributions."""
import gzip
import os
import struct

import numpy as np
import pytest

from fedtiny import datasets

FASHION = datasets.DEFAULT_DIRS["fashion-mnist"]
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _idx_bytes(a: np.ndarray, code: int) -> bytes:
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def test_read_idx_raw_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    ints = np.array([1, -2, 300000], dtype=">i4")
    (tmp_path / "b").write_bytes(_idx_bytes(ints, 0x0C))
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "a-idx3-ubyte")), images)
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "a-idx3-ubyte.gz")), images)
    assert datasets.read_idx(str(tmp_path / "b")).tolist() == [1, -2, 300000]


@pytest.mark.parametrize("data,match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "not an IDX"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX element type"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x00\x01", "needs 11"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_read_idx_rejects_bad_files(tmp_path, data, match):
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match):
        datasets.read_idx(str(path))


def test_idx_directory_in_the_layout_of_the_debian_package(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for stem, arr, code in (("train-images-idx3-ubyte", x, 8), ("train-labels-idx1-ubyte", y, 8),
                            ("t10k-images-idx3-ubyte", x[:2], 8), ("t10k-labels-idx1-ubyte", y[:2], 8)):
        (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(_idx_bytes(arr, code)))
    d = datasets.load("mnist", str(tmp_path))
    assert d.x_train.shape == (5, 28, 28, 1) and d.x_train.dtype == np.float32
    np.testing.assert_array_equal(d.x_train[..., 0], x / np.float32(255))
    assert d.y_train.tolist() == [3, 1, 4, 1, 5] and d.y_test.tolist() == [3, 1] and d.n_classes == 6


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashion-mnist", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not found in"):
        datasets.load("fashion-mnist", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("cifar")
    with pytest.raises(ValueError, match="--data-dir"):
        datasets.load("emnist-digits")
    with pytest.raises(ValueError, match="--data-dir"):
        datasets.load("mnist")


@needs_fashion
def test_real_fashion_mnist():
    d = datasets.load("fashion-mnist")
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.x_train.dtype == np.float32 and 0 <= d.x_train.min() and d.x_train.max() == 1
    assert np.bincount(d.y_train).tolist() == [6000] * 10 and np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.n_classes == 10


def test_bundled_digits_split_is_seeded_and_complete():
    a = datasets.load("digits", seed=1)
    b = datasets.load("digits", seed=1)
    c = datasets.load("digits", seed=2)
    assert a.x_train.shape[1:] == (8, 8, 1) and len(a.y_train) + len(a.y_test) == 1797
    assert len(a.y_test) == round(0.2 * 1797) and a.n_classes == 10
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.x_train.max() == 1.0 and a.x_train.min() == 0.0  # 0..16 scaled by the stored pixel_max
    assert sorted(np.bincount(np.concatenate([a.y_train, a.y_test])).tolist()) == sorted(
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, 50)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    d = datasets.load(str(tmp_path / "mine.npz"))
    assert d.x_train.shape[1:] == (4, 4, 1) and len(d.y_train) == 40 and d.n_classes == 3
    np.savez(tmp_path / "f.npz", x=np.full((4, 3), 0.5, np.float32), y=np.arange(4),
             x_test=np.zeros((2, 3), np.float32), y_test=np.array([0, 1]))
    d = datasets.load(str(tmp_path / "f.npz"))
    assert d.x_train.shape == (4, 3) and d.y_test.tolist() == [0, 1]
    for bad, match in ((dict(x=x), "needs arrays 'x' and 'y'"), (dict(x=x, y=y[:3]), "one label per image"),
                       (dict(x=x * 2.0, y=y), r"lie in \[0, 1\]"), (dict(x=x, y=y - 5), ">= 0")):
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(ValueError, match=match):
            datasets.load(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        datasets.load(str(tmp_path / "junk.npz"))
    with pytest.raises(ValueError, match="not found"):
        datasets.load(str(tmp_path / "absent.npz"))


# --- partitioning ---

LABELS = np.repeat(np.arange(10), 600)  # balanced like Fashion-MNIST, 6,000 samples


def _all_indices(splits):
    return np.concatenate([np.concatenate([s.train, s.holdout]) for s in splits])


@pytest.mark.parametrize("scheme", datasets.PARTITIONS)
def test_partition_is_a_partition_and_reproducible(scheme):
    a = datasets.partition(LABELS, 50, scheme, seed=3)
    b = datasets.partition(LABELS, 50, scheme, seed=3)
    c = datasets.partition(LABELS, 50, scheme, seed=4)
    idx = _all_indices(a)
    assert sorted(idx.tolist()) == list(range(len(LABELS)))  # every sample once
    assert all(np.array_equal(s.train, t.train) and np.array_equal(s.holdout, t.holdout) for s, t in zip(a, b))
    assert not all(np.array_equal(s.train, t.train) for s, t in zip(a, c))
    for s in a:  # held-out part: 10% of the client's samples
        total = s.train.size + s.holdout.size
        assert s.holdout.size == min(max(round(0.1 * total), 1), total - 1)


def test_iid_partition_sizes_and_labels():
    splits = datasets.partition(LABELS, 10, "iid", holdout=0.0, seed=0)
    assert [s.n_samples for s in splits] == [600] * 10
    for s in splits:  # each client sees every class in about its global share (60 each)
        counts = np.bincount(LABELS[s.train], minlength=10)
        assert counts.min() >= 35 and counts.max() <= 85


def test_shards_give_each_client_two_labels():
    splits = datasets.partition(LABELS, 100, "shards", shards_per_client=2, holdout=0.0, seed=0)
    assert [s.n_samples for s in splits] == [60] * 100
    labels_per_client = [len(np.unique(LABELS[s.train])) for s in splits]
    assert max(labels_per_client) <= 2 and np.mean(labels_per_client) > 1.5
    one = datasets.partition(LABELS, 100, "shards", shards_per_client=1, holdout=0.0, seed=0)
    assert all(len(np.unique(LABELS[s.train])) == 1 for s in one)


def test_dirichlet_concentration_controls_label_skew():
    def skew(alpha):
        splits = datasets.partition(LABELS, 20, "dirichlet", alpha=alpha, holdout=0.0, seed=0)
        return np.mean([np.bincount(LABELS[s.train], minlength=10).max() / s.n_samples for s in splits])
    # a client's largest class share: 1/10 for perfectly balanced data, 1 for a single class
    assert skew(1000.0) < 0.15
    assert skew(0.1) > 0.5
    assert skew(0.1) > skew(0.5) > skew(5.0)


def test_partition_bad_arguments():
    with pytest.raises(ValueError, match="unknown partition"):
        datasets.partition(LABELS, 10, "zipf")
    with pytest.raises(ValueError, match="use fewer --clients"):
        datasets.partition(LABELS[:10], 6, "iid")
    with pytest.raises(ValueError, match="alpha"):
        datasets.partition(LABELS, 10, "dirichlet", alpha=0)
    with pytest.raises(ValueError, match="raise --alpha"):
        datasets.partition(LABELS[:60], 25, "dirichlet", alpha=0.001)


def _ref_shards_with_iid_share(y, n_clients, share, seed, shards_per_client=2):
    """Independent recomputation of the documented generator (holdout 0): from the rng seeded
    [seed, 0x5EED], a permutation of all samples; its first round(share * n) go out IID in equal
    consecutive parts; the rest are shuffled, sorted by label (stable), cut into
    n_clients * shards_per_client equal shards, and the shards dealt by a permutation."""
    rng = np.random.default_rng([seed, 0x5EED])
    n = len(y)
    perm = rng.permutation(n)
    m = int(round(share * n))
    common, rest = perm[:m], perm[m:]
    sizes = [m // n_clients + (1 if i < m % n_clients else 0) for i in range(n_clients)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    shuffled = rng.permutation(len(rest))
    labels = y[rest][shuffled]
    by_label = [shuffled[i] for i in sorted(range(len(shuffled)), key=lambda i: (labels[i], i))]
    n_shards = n_clients * shards_per_client
    q, r = divmod(len(rest), n_shards)
    bounds = np.concatenate([[0], np.cumsum([q + (1 if i < r else 0) for i in range(n_shards)])])
    deal = rng.permutation(n_shards).reshape(n_clients, shards_per_client)
    out = []
    for k in range(n_clients):
        mine = [rest[by_label[j]] for s in deal[k] for j in range(bounds[s], bounds[s + 1])]
        idx = np.concatenate([common[starts[k]:starts[k + 1]], np.asarray(mine, dtype=np.int64)])
        out.append(sorted(idx.tolist()))
    return out


def test_iid_share_matches_an_independent_recomputation_and_mixes_as_documented():
    for seed in (0, 7):
        splits = datasets.partition(LABELS, 100, "shards", iid_share=0.5, holdout=0.0, seed=seed)
        ref = _ref_shards_with_iid_share(LABELS, 100, 0.5, seed)
        assert [sorted(s.train.tolist()) for s in splits] == ref
    splits = datasets.partition(LABELS, 100, "shards", iid_share=0.5, holdout=0.1, seed=0)
    assert sorted(_all_indices(splits).tolist()) == list(range(len(LABELS)))   # every sample once
    # each client: 30 IID samples (about 3 per label) and 30 from two label shards, so its two
    # largest labels hold about (0.5 * 2/10 + 0.5) = 60% of its data (IID: ~25%, shards: 100%)
    top2 = [np.sort(np.bincount(LABELS[np.concatenate([s.train, s.holdout])], minlength=10))[-2:].sum() / 60
            for s in splits]
    assert 0.55 < np.mean(top2) < 0.7
    assert np.mean([len(np.unique(LABELS[s.train])) for s in splits]) > 5      # the IID half reaches most labels
    d = datasets.partition(LABELS, 20, "dirichlet", alpha=0.1, iid_share=0.5, holdout=0.0, seed=0)
    assert sorted(_all_indices(d).tolist()) == list(range(len(LABELS)))
    assert all(len(np.unique(LABELS[s.train])) == 10 for s in d)             # 150 IID samples each
    # share 0 is the plain scheme, share 1 is IID over equal parts
    plain = datasets.partition(LABELS, 100, "shards", holdout=0.0, seed=0)
    zero = datasets.partition(LABELS, 100, "shards", iid_share=0.0, holdout=0.0, seed=0)
    assert all(np.array_equal(a.train, b.train) for a, b in zip(plain, zero))
    one = datasets.partition(LABELS, 100, "shards", iid_share=1.0, holdout=0.0, seed=0)
    assert [s.n_samples for s in one] == [60] * 100
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="IID share must be in"):
            datasets.partition(LABELS, 10, "shards", iid_share=bad)


def test_dominant_labels_against_counting():
    splits = datasets.partition(LABELS, 30, "dirichlet", alpha=0.3, holdout=0.1, seed=2)
    dom = datasets.dominant_labels(LABELS, splits)
    for s, d in zip(splits, dom):
        counts = {c: int(np.sum(LABELS[s.train] == c)) for c in range(10)}
        best = max(counts.values())
        assert d == min(c for c, v in counts.items() if v == best)
    empty = datasets.ClientSplit(train=np.zeros(0, np.int64), holdout=np.zeros(0, np.int64))
    assert datasets.dominant_labels(LABELS, [empty]).tolist() == [-1]
