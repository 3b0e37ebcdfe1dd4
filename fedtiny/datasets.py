"""Real datasets for simulation and clients, and their partitioning into federated clients.

Images come out as float32 NHWC in [0, 1], labels as int64 (N,); with pixels="uint8" a set of
integer pixels stays as loaded (a quarter of the memory) and Dataset.floats converts rows as they
are used, with the same arithmetic, so the floats are the same bit for bit. Sources:
  - "fashion-mnist", "mnist": the IDX files (gzip or raw), Fashion-MNIST by default from the
    Debian package dataset-fashion-mnist; any other directory with --data-dir.
  - "emnist-<split>" (e.g. emnist-balanced, emnist-digits): EMNIST's IDX files, transposed back
    to upright images (EMNIST stores them column-major).
  - "digits": the 8x8 UCI handwritten digits bundled in fedtiny/data (no download), split into
    train/test with a seed.
  - a path to a user's .npz with "x" and "y" (and optionally "x_test", "y_test").
"""
from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass

import numpy as np

DEFAULT_DIRS = {  # where a distribution package puts the files; others need --data-dir
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
}
INSTALL_HINT = {
    "fashion-mnist": "apt-get install dataset-fashion-mnist, or pass --data-dir DIR",
}
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NAMES = ("digits", "fashion-mnist", "mnist", "emnist-<split>", "PATH.npz")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


PIXELS = ("float32", "uint8")


def pixels_to_float(x: np.ndarray, pixel_max: float) -> np.ndarray:
    """Integer pixels in [0, pixel_max] as float32 in [0, 1]: the one conversion every path uses."""
    return x.astype(np.float32) / np.float32(pixel_max)


@dataclass(frozen=True)
class Dataset:
    """A train and a test set as NHWC images with int64 labels: float32 in [0, 1], or integer
    pixels (pixel_max not None) that floats() turns into those same float32 values."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    pixel_max: float | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def floats(self, x: np.ndarray) -> np.ndarray:
        """Rows of x_train or x_test as float32 in [0, 1] (converted here when kept as pixels)."""
        return x if self.pixel_max is None else pixels_to_float(x, self.pixel_max)


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or raw, into a numpy array.

    Streamed into the array: neither the compressed nor the decompressed file is held beside it
    (Fashion-MNIST's training images: 47 MB, not 120)."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if gz else raw
        try:
            return _read_idx_stream(f, path)
        except (OSError, EOFError) as exc:
            if not gz:
                raise
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None


def _read_exactly(f, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


READ_BYTES = 1 << 20   # GzipFile.readinto reads the whole request into a bytes object first: ask for a MB at a time


def _read_into(f, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:got + READ_BYTES])
        if not n:
            break
        got += n
    return got


def _read_idx_stream(f, path: str) -> np.ndarray:
    head = _read_exactly(f, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {head!r})")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    dims = _read_exactly(f, 4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4", ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    out = np.empty(shape, dtype)
    got = _read_into(f, memoryview(out.reshape(-1).view(np.uint8)))
    extra = len(_read_exactly(f, 1 << 16)) if got == out.nbytes else 0
    if got != out.nbytes or extra:
        size = 4 + 4 * ndim + got + extra
        raise ValueError(f"{path}: {size}{'+' if extra else ''} bytes, an IDX array of shape {shape} needs {expected}")
    return out.astype(dtype.newbyteorder("="), copy=False)


def _find(directory: str, stems: list[str]) -> str | None:
    for stem in stems:
        for suffix in (".gz", ""):
            path = os.path.join(directory, stem + suffix)
            if os.path.isfile(path):
                return path
    return None


def _idx_set(name: str, directory: str, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = {}
    for part, split in (("x_train", "train-images"), ("y_train", "train-labels"),
                        ("x_test", "t10k-images"), ("y_test", "t10k-labels")):
        if prefix:  # EMNIST: emnist-balanced-train-images-idx3-ubyte, ...-test-...
            split = split.replace("t10k", "test")
        kind = "idx3" if "images" in split else "idx1"
        stems = [f"{prefix}{split}-{kind}-ubyte", f"{prefix}{split}.{kind}-ubyte"]
        path = _find(directory, stems)
        if path is None:
            hint = INSTALL_HINT.get(name, "pass --data-dir DIR")
            raise ValueError(f"dataset {name}: {stems[0]}[.gz] not found in {directory} ({hint})")
        parts[part] = read_idx(path)
    return parts["x_train"], parts["y_train"], parts["x_test"], parts["y_test"]


def _images(x: np.ndarray, pixel_max: float | None, what: str, keep_pixels: bool = False) -> np.ndarray:
    """uint8 (or integer) pixels scaled by pixel_max, or floats already in [0, 1]; NHWC float32
    (keep_pixels: integer pixels that fit uint8 are returned as uint8, checked but not scaled)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim < 2:
        raise ValueError(f"{what}: x must hold one image or vector per row, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        scale = _pixel_max(pixel_max)
        if x.size and (x.min() < 0 or x.max() > scale):
            raise ValueError(f"{what}: integer pixels must lie in [0, {scale:g}]")
        if keep_pixels and scale <= 255:
            return x.astype(np.uint8, copy=False)
        return pixels_to_float(x, scale)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all() or (x.size and (x.min() < 0 or x.max() > 1)):
            raise ValueError(f"{what}: float pixels must be finite and lie in [0, 1]")
        return x
    raise ValueError(f"{what}: x must be integer or float pixels, got {x.dtype}")


def _pixel_max(pixel_max: float | None) -> float:
    return float(pixel_max) if pixel_max is not None else 255.0


def _kept(xs: list[np.ndarray], pixel_max: float | None) -> float | None:
    """The Dataset's pixel_max: set when every image array was kept as uint8 pixels."""
    return _pixel_max(pixel_max) if all(x.dtype == np.uint8 for x in xs) else None


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what}: y must be 1-D with one label per image ({n}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers, got {y.dtype}")
    if n and y.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0")
    return y.astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Seeded stratified-free random train/test split: (x_train, y_train, x_test, y_test)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, int(round(test_fraction * len(y))))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_npz(path: str, *, name: str | None = None, test_fraction: float = 0.2, seed: int = 0,
             pixels: str = "float32") -> Dataset:
    """A .npz with x (N,H,W[,C] or N,D; uint8 0..255 or float in [0,1]) and integer y; x_test/y_test optional."""
    if not os.path.isfile(path):
        raise ValueError(f"dataset file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # np.load raises many kinds of errors on a damaged file
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise ValueError(f"{path}: a dataset .npz needs arrays 'x' and 'y', found {sorted(arrays)}")
    pixel_max = float(arrays["pixel_max"]) if "pixel_max" in arrays else None
    keep = _check_pixels(pixels)
    x = _images(arrays["x"], pixel_max, path, keep)
    y = _labels(arrays["y"], len(x), path)
    if "x_test" in arrays and "y_test" in arrays:
        x_test = _images(arrays["x_test"], pixel_max, path, keep)
        y_test = _labels(arrays["y_test"], len(x_test), path)
        x_train, y_train = x, y
    else:
        x_train, y_train, x_test, y_test = split(x, y, test_fraction, seed)
    n_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if x_train.dtype != x_test.dtype:   # x kept as pixels, x_test given as floats: both as floats
        x_train, x_test = (pixels_to_float(a, _pixel_max(pixel_max)) if a.dtype == np.uint8 else a
                           for a in (x_train, x_test))
    return Dataset(name or os.path.basename(path), x_train, y_train, x_test, y_test, n_classes,
                   _kept([x_train, x_test], pixel_max))


def _check_pixels(pixels: str) -> bool:
    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, got {pixels!r}")
    return pixels == "uint8"


def load(name: str, data_dir: str | None = None, *, seed: int = 0, test_fraction: float = 0.2,
         pixels: str = "float32") -> Dataset:
    """Load a dataset by name (see module docstring); data_dir overrides the default location.
    pixels="uint8" keeps integer pixels as loaded (Dataset.floats converts rows as used)."""
    keep = _check_pixels(pixels)
    if name.endswith(".npz"):
        return load_npz(name, test_fraction=test_fraction, seed=seed, pixels=pixels)
    if name == "digits":
        return load_npz(os.path.join(data_dir or BUNDLED_DIR, "digits.npz"), name="digits",
                        test_fraction=test_fraction, seed=seed, pixels=pixels)
    if name in ("fashion-mnist", "mnist"):
        prefix = ""
    elif name.startswith("emnist-") and len(name) > len("emnist-"):
        prefix = name + "-"
    else:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(NAMES)}")
    directory = data_dir or DEFAULT_DIRS.get(name)
    if directory is None:
        raise ValueError(f"dataset {name}: pass --data-dir DIR holding its IDX files")
    if not os.path.isdir(directory):
        hint = INSTALL_HINT.get(name, "pass --data-dir DIR")
        raise ValueError(f"dataset {name}: directory {directory} not found ({hint})")
    x_train, y_train, x_test, y_test = _idx_set(name, directory, prefix)
    if prefix:  # EMNIST images are stored transposed
        x_train, x_test = x_train.transpose(0, 2, 1), x_test.transpose(0, 2, 1)
    x_train = _images(x_train, None, name, keep)
    x_test = _images(x_test, None, name, keep)
    y_train = _labels(y_train, len(x_train), name)
    y_test = _labels(y_test, len(x_test), name)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, n_classes, _kept([x_train, x_test], None))


# --- partitioning ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientSplit:
    """One client's share: indices into the training set, for local training and held-out evaluation."""

    train: np.ndarray
    holdout: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.train.size)


PARTITIONS = ("iid", "shards", "dirichlet")


def _iid(n: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), n_clients)


def _shards(y: np.ndarray, n_clients: int, shards_per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into n_clients*s equal shards, give each client s of them."""
    n_shards = n_clients * shards_per_client
    if n_shards > len(y):
        raise ValueError(f"{n_clients} clients x {shards_per_client} shards need at least {n_shards} samples, "
                         f"the dataset has {len(y)}")
    # shuffle first so that, within a label, which samples land in which shard is seeded too
    shuffled = rng.permutation(len(y))
    order = shuffled[np.argsort(y[shuffled], kind="stable")]
    shards = np.array_split(order, n_shards)
    assignment = rng.permutation(n_shards).reshape(n_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in assignment]


def _dirichlet(y: np.ndarray, n_clients: int, alpha: float, min_size: int,
               rng: np.random.Generator, max_tries: int = 100) -> list[np.ndarray]:
    """NIID-Bench (Li et al. 2022) label skew: per class, proportions ~ Dir(alpha) over clients.

    As in NIID-Bench, clients already above the mean size get no more of a class, and the draw is
    repeated until every client has at least min_size samples.
    """
    classes = np.unique(y)
    n = len(y)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients, dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_clients, alpha))
            p = p * (sizes < n / n_clients)
            if p.sum() <= 0:  # every eligible share underflowed (tiny alpha): spread evenly over them
                p = (sizes < n / n_clients).astype(np.float64)
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
                sizes[k] += len(chunk)
        if sizes.min() >= min_size:
            return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"Dirichlet(alpha={alpha}) over {n_clients} clients left a client with fewer than "
                     f"{min_size} samples in {max_tries} draws: raise --alpha or use fewer --clients")


def partition(y: np.ndarray, n_clients: int, scheme: str = "iid", *, alpha: float = 0.5,
              shards_per_client: int = 2, holdout: float = 0.1, seed: int = 0,
              iid_share: float = 0.0) -> list[ClientSplit]:
    """Split sample indices over n_clients (iid, shards or dirichlet); each keeps a held-out part.

    iid_share P > 0 (shards, dirichlet): a seeded random share P of the samples is dealt IID
    first (equal parts, like "iid"), the rest by the scheme; each client holds both parts.
    Seeded: the same arguments give the same split. Every sample goes to exactly one client.
    """
    y = np.asarray(y)
    if int(n_clients) < 1:
        raise ValueError(f"number of clients must be >= 1, got {n_clients}")
    n_clients = int(n_clients)
    if n_clients * 2 > len(y):
        raise ValueError(f"{n_clients} clients need at least {2 * n_clients} samples (one to train, one to "
                         f"evaluate each), the dataset has {len(y)}: use fewer --clients")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {holdout}")
    if not (0 <= iid_share <= 1 and math.isfinite(iid_share)):
        raise ValueError(f"IID share must be in [0, 1], got {iid_share}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    common = None
    full_y = y
    if iid_share > 0 and scheme != "iid":  # the common part first, then the scheme on the rest
        perm = rng.permutation(len(y))
        m = int(round(iid_share * len(y)))
        common, rest = np.array_split(perm[:m], n_clients), perm[m:]
        y = y[rest]
    if common is not None and rest.size == 0:  # share 1: nothing left for the scheme
        parts = [np.zeros(0, np.int64)] * n_clients
    elif scheme == "iid":
        parts = _iid(len(y), n_clients, rng)
    elif scheme == "shards":
        if int(shards_per_client) < 1:
            raise ValueError(f"shards per client must be >= 1, got {shards_per_client}")
        parts = _shards(y, n_clients, int(shards_per_client), rng)
    elif scheme == "dirichlet":
        if not (alpha > 0 and np.isfinite(alpha)):
            raise ValueError(f"Dirichlet alpha must be a positive number, got {alpha}")
        parts = _dirichlet(y, n_clients, float(alpha), 2 if holdout > 0 else 1, rng)
    else:
        raise ValueError(f"unknown partition {scheme!r}: use one of {', '.join(PARTITIONS)}")
    if common is not None:
        parts = [np.concatenate([c, rest[p]]) for c, p in zip(common, parts)]
        y = full_y
    splits = []
    for idx in parts:
        idx = rng.permutation(idx)
        n_hold = int(round(holdout * len(idx)))
        if holdout > 0 and len(idx) >= 2:
            n_hold = min(max(n_hold, 1), len(idx) - 1)
        splits.append(ClientSplit(train=idx[n_hold:].astype(np.int64), holdout=idx[:n_hold].astype(np.int64)))
    return splits


def dominant_labels(y: np.ndarray, splits: list[ClientSplit]) -> np.ndarray:
    """Each client's most frequent training label (the smallest of equally frequent ones; -1 without data)."""
    y = np.asarray(y)
    n_labels = int(y.max()) + 1 if y.size else 0
    return np.array([np.bincount(y[s.train], minlength=n_labels).argmax() if s.train.size else -1 for s in splits],
                    dtype=np.int64)


def check_model_fits(model, data: Dataset, spec: str) -> None:
    """Refuse a model whose input or output size does not fit the data set, naming the fix."""
    need = int(np.prod(model.input_shape))
    have = int(np.prod(data.input_shape))
    shape = "x".join(str(s) for s in data.input_shape)
    if need != have or (len(model.input_shape) > 1 and tuple(model.input_shape) != data.input_shape):
        fix = " (use --model mlp:64-32-10)" if have == 64 else ""
        raise ValueError(f"model {spec} takes input {tuple(model.input_shape)}, dataset {data.name} has {shape}{fix}")
    if model.n_classes < data.n_classes:
        raise ValueError(f"model {spec} has {model.n_classes} outputs, dataset {data.name} has {data.n_classes} classes")
