"""Model specs, their one contiguous float32 parameter vector, and inference through the C engine.

Parameter layout (the "interchange layout" the codec, FedAvg and TFLite export see): layers in
order, each layer's weight then bias; Dense W[out][in] row-major, Conv2D W[out_c][kh][kw][in_c]
(OHWI); stride 1, VALID padding; MaxPool 2x2 stride 2; Flatten of NHWC in (h, w, c) order.

Initialisation (deterministic from the seed, the same on every platform: the codec's
counter-based generator, u_i = ft_rng_u01(i, ft_rng_key(seed)) with i the parameter's index in the
vector): a weight followed by a ReLU is He-uniform U(-sqrt(6/fan_in), +sqrt(6/fan_in)); the last
(logit) layer is Glorot-uniform U(-sqrt(6/(fan_in+fan_out)), +...); every bias is 0.
`init(seed, scheme="pytorch")` draws PyTorch's defaults for nn.Linear / nn.Conv2d instead (weights
and biases U(-1/sqrt(fan_in), +1/sqrt(fan_in))), for like-for-like comparisons with PyTorch.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from . import _core

DENSE, CONV2D, MAXPOOL2, RELU, FLATTEN = 1, 2, 3, 4, 5
_KIND_NAMES = {DENSE: "dense", CONV2D: "conv2d", MAXPOOL2: "maxpool2", RELU: "relu", FLATTEN: "flatten"}

# arena flags (csrc/fedtiny.h FT_TRAIN_*)
FLAG_MOMENTUM, FLAG_PROX, FLAG_INT8, FLAG_INFER = 1, 2, 4, 8
PREDICT_BATCH = 32
INIT_SCHEMES = ("fedtiny", "pytorch")


@dataclass(frozen=True)
class Layer:
    """One layer: kind, input/output shapes (h, w, c), kernel size, and where its tensors live."""

    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    k: int = 0
    w_offset: int = -1  # first weight in the parameter vector, -1 if none
    w_shape: tuple[int, ...] = ()
    b_offset: int = -1
    b_shape: tuple[int, ...] = ()

    @property
    def n_params(self) -> int:
        return int(np.prod(self.w_shape) + np.prod(self.b_shape)) if self.w_shape else 0


def _parse(spec: str) -> tuple[tuple[int, ...], list[tuple]]:
    if not isinstance(spec, str):
        raise ValueError(f"model spec must be a string such as '2nn', 'cnn' or 'mlp:784-64-10', got {spec!r}")
    s = spec.strip().lower()
    if s == "2nn":
        s = "mlp:784-200-200-10"
    if s == "cnn":
        return (28, 28, 1), [("conv", 32, 5), ("relu",), ("pool",), ("conv", 64, 5), ("relu",), ("pool",),
                             ("flatten",), ("dense", 128), ("relu",), ("dense", 10)]
    if s.startswith("mlp:"):
        parts = s[4:].split("-")
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"model spec {spec!r}: mlp sizes must be integers, e.g. 'mlp:784-64-10'") from None
        if len(sizes) < 2 or any(n < 1 for n in sizes):
            raise ValueError(f"model spec {spec!r}: need at least an input and an output size, all >= 1")
        if sizes[-1] < 2:
            raise ValueError(f"model spec {spec!r}: need at least 2 classes")
        ops: list[tuple] = []
        for i, n in enumerate(sizes[1:]):
            ops.append(("dense", n))
            if i < len(sizes) - 2:
                ops.append(("relu",))
        return (sizes[0],), ops
    if s.startswith("seq:"):
        return _parse_seq(spec, s[4:])
    raise ValueError(f"unknown model spec {spec!r} (known: '2nn', 'cnn', 'mlp:A-B-...-K', "
                     f"'seq:HxWxC,conv<oc>k<k>,relu,pool,flatten,dense<n>')")


def _parse_seq(spec: str, body: str) -> tuple[tuple[int, ...], list[tuple]]:
    """'seq:12x12x1,conv4k3,relu,pool,flatten,dense10': any chain of the supported layers."""
    toks = [t.strip() for t in body.split(",") if t.strip()]
    bad = ValueError(f"model spec {spec!r}: expected 'seq:HxWxC' or 'seq:N' then conv<oc>k<k>, relu, pool, "
                     f"flatten, dense<n>, comma-separated")
    if len(toks) < 2:
        raise bad
    try:
        shape = tuple(int(v) for v in toks[0].split("x"))
    except ValueError:
        raise bad from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise bad
    ops: list[tuple] = []
    for t in toks[1:]:
        try:
            if t.startswith("conv") and "k" in t[4:]:
                oc, k = t[4:].split("k")
                ops.append(("conv", int(oc), int(k)))
            elif t.startswith("dense"):
                ops.append(("dense", int(t[5:])))
            elif t in ("relu", "pool", "flatten"):
                ops.append((t,))
            else:
                raise bad
        except ValueError:
            raise bad from None
        if len(ops[-1]) > 1 and min(ops[-1][1:]) < 1:
            raise bad
    if ops[-1][0] != "dense" or ops[-1][1] < 2:
        raise ValueError(f"model spec {spec!r}: the last layer must be dense with at least 2 outputs (the logits)")
    return shape, ops


class Model:
    """A sequential model; its parameters are one float32 vector owned by the caller."""

    def __init__(self, spec: str):
        input_shape, ops = _parse(spec)
        self.spec = spec
        self.input_shape: tuple[int, ...] = input_shape
        shape = (input_shape + (1, 1))[:3] if len(input_shape) == 3 else (1, 1, input_shape[0])
        layers: list[Layer] = []
        off = 0
        for op in ops:
            h, w, c = shape
            if op[0] == "dense":
                if (h, w) != (1, 1):
                    raise ValueError(f"model spec {spec!r}: dense layer after a non-flat shape {shape}")
                out = op[1]
                lay = Layer("dense", shape, (1, 1, out), 0, off, (out, c), off + out * c, (out,))
            elif op[0] == "conv":
                oc, k = op[1], op[2]
                if len(input_shape) != 3:
                    raise ValueError(f"model spec {spec!r}: conv needs an HxWxC input")
                if k > h or k > w:
                    raise ValueError(f"model spec {spec!r}: {k}x{k} conv does not fit input {shape}")
                o = (h - k + 1, w - k + 1, oc)
                lay = Layer("conv2d", shape, o, k, off, (oc, k, k, c), off + oc * k * k * c, (oc,))
            elif op[0] == "pool":
                if h < 2 or w < 2:
                    raise ValueError(f"model spec {spec!r}: 2x2 pooling needs an input of at least 2x2, got {shape}")
                lay = Layer("maxpool2", shape, (h // 2, w // 2, c))
            elif op[0] == "relu":
                lay = Layer("relu", shape, shape)
            else:
                lay = Layer("flatten", shape, (1, 1, h * w * c))
            off += lay.n_params
            layers.append(lay)
            shape = lay.out_shape
        if len(layers) > _core.MAX_LAYERS:
            raise ValueError(f"model spec {spec!r}: {len(layers)} layers, at most {_core.MAX_LAYERS}")
        self.layers: list[Layer] = layers
        self.n_params: int = off
        self.n_classes: int = shape[2]
        self.input_size: int = int(np.prod(input_shape))
        kinds = {v: k for k, v in _KIND_NAMES.items()}
        rows = [[kinds[lay.kind], *lay.in_shape, *lay.out_shape, lay.k, lay.w_offset, lay.b_offset] for lay in layers]
        self._desc = np.ascontiguousarray(np.array(rows, dtype=np.int64))
        self._local = threading.local()  # arenas per thread: concurrent clients never share one
        try:
            _core.net_arena_floats(self._desc, self.n_params, 1, 0)
        except ValueError:
            raise ValueError(f"model spec {spec!r} is too large for the engine (at most 2^26 values per "
                             f"sample per layer, 2^28 parameters)") from None

    def __repr__(self) -> str:
        return f"Model({self.spec!r}, n_params={self.n_params})"

    def arch_text(self) -> str:
        """The layer structure as canonical text: one line per layer, "kind HxWxC -> HxWxC kK".

        Kinds, shapes and kernel sizes fix the parameter layout (see the module docstring), so
        two specs with the same text train the same parameter vector: 'mlp:64-32-10' and
        'seq:1x1x64,dense32,relu,dense10' are one architecture; 'mlp:64-24-24-10' (2,410
        parameters, like 'mlp:64-32-10') is another."""
        lines = ["fedtiny-arch/1"]
        for lay in self.layers:
            (h, w, c), (oh, ow, oc) = lay.in_shape, lay.out_shape
            lines.append(f"{lay.kind} {h}x{w}x{c} -> {oh}x{ow}x{oc} k{lay.k}")
        return "\n".join(lines) + "\n"

    def arch_hash(self) -> bytes:
        """SHA-256 of arch_text() (ASCII), first 16 bytes: the OFFER's architecture hash.

        The same bytes on every platform (no floats, no dict order); a firmware computes it from
        the same text (firmware_bridge/example/fw_device.c) with the same SHA-256 code: the wire
        library's (hashlib would load OpenSSL, 3.7 MB of RSS on a device)."""
        from ._wire import ffi, lib
        text = self.arch_text().encode("ascii")
        out = ffi.new("uint8_t[32]")
        lib.ft_sha256(text, len(text), out)
        return bytes(out)[:16]

    # ---- parameters ----------------------------------------------------------------
    def init(self, seed: int = 0, scheme: str = "fedtiny") -> np.ndarray:
        """Deterministic initial parameters: "fedtiny" (He/Glorot-uniform weights, zero biases) or
        "pytorch" (nn.Linear / nn.Conv2d defaults); see the module docstring."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"init scheme must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
        p = np.zeros(self.n_params, dtype=np.float32)
        param_layers = [lay for lay in self.layers if lay.w_shape]
        for i, lay in enumerate(param_layers):
            fo = lay.w_shape[0]
            fi = int(np.prod(lay.w_shape[1:]))
            if scheme == "pytorch":   # kaiming_uniform(a=sqrt(5)) gives 1/sqrt(fan_in); the bias the same
                bound = 1.0 / np.sqrt(fi)
                b = p[lay.b_offset:lay.b_offset + lay.b_shape[0]]
                _core.uniform_f32(b, -bound, bound, int(seed), lay.b_offset)
            else:
                bound = np.sqrt(6.0 / (fi + fo)) if i == len(param_layers) - 1 else np.sqrt(6.0 / fi)
            w = p[lay.w_offset:lay.w_offset + fo * fi]
            _core.uniform_f32(w, -bound, bound, int(seed), lay.w_offset)
        return p

    def tensors(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weight, bias) views into `params` for each layer that has parameters."""
        self.check_params(params)
        out = []
        for lay in self.layers:
            if lay.w_shape:
                w = params[lay.w_offset:lay.w_offset + int(np.prod(lay.w_shape))].reshape(lay.w_shape)
                b = params[lay.b_offset:lay.b_offset + lay.b_shape[0]]
                out.append((w, b))
        return out

    def check_params(self, params: np.ndarray, name: str = "params", writable: bool = False) -> None:
        if not isinstance(params, np.ndarray) or params.dtype != np.float32 or params.ndim != 1:
            got = f"{params.dtype} {params.ndim}-D array" if isinstance(params, np.ndarray) else type(params).__name__
            raise ValueError(f"{name} must be a 1-D float32 numpy array, got {got}")
        if params.size != self.n_params:
            raise ValueError(f"{name} has {params.size} values, model {self.spec!r} has {self.n_params} parameters")
        if not params.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        if writable and not params.flags.writeable:
            raise ValueError(f"{name} is read-only; local_sgd updates it in place")
        if not _all_finite(params):
            raise ValueError(f"{name} holds NaN or Inf")

    def check_x(self, x, name: str = "x") -> np.ndarray:
        """x as a C-contiguous float32 (N, input_size) array, or a ValueError naming the problem."""
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"{name} must be an array of at least one sample, got shape {x.shape}")
        if int(np.prod(x.shape[1:])) != self.input_size:
            raise ValueError(f"{name} has shape {x.shape}: each sample must hold {self.input_size} values "
                             f"(input shape {self.input_shape}) for model {self.spec!r}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        x2 = np.ascontiguousarray(x.reshape(x.shape[0], self.input_size), dtype=np.float32)
        if not _all_finite(x2):
            raise ValueError(f"{name} holds NaN or Inf")
        return x2

    def check_y(self, y, n: int, name: str = "y") -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match x, got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"{name} holds labels outside [0, {self.n_classes}): min {y.min()}, max {y.max()}")
        return np.ascontiguousarray(y, dtype=np.int32)

    # ---- the arena -------------------------------------------------------------------
    def _arena_floats(self, batch_size: int, flags: int) -> int:
        return int(_core.net_arena_floats(self._desc, self.n_params, batch_size, flags))

    def arena_bytes(self, batch_size: int, *, momentum: bool = False, prox: bool = False,
                    weights: str = "float32") -> int:
        """Bytes of the one buffer training at this batch size uses: weights in training layout
        (float32, or int8 blocks), velocity/global copies if asked, activations, gradients, scratch."""
        return 4 * self._arena_floats(_check_batch(batch_size), _flags(momentum, prox, weights))

    def _arena(self, batch_size: int, flags: int) -> np.ndarray:
        cache = getattr(self._local, "arenas", None)
        if cache is None:
            cache = self._local.arenas = {}
        key = (batch_size, flags)
        a = cache.get(key)
        if a is None:
            a = cache[key] = np.empty(self._arena_floats(batch_size, flags), dtype=np.float32)
        return a

    def release_arenas(self) -> None:
        """Drop this thread's cached arenas (they are rebuilt on the next call)."""
        self._local.arenas = {}

    # ---- inference ---------------------------------------------------------------------
    def predict(self, params: np.ndarray, x) -> np.ndarray:
        """Logits, float32 (N, n_classes)."""
        self.check_params(params)
        x2 = self.check_x(x)
        batch = min(PREDICT_BATCH, x2.shape[0])
        arena = self._arena(batch, FLAG_INFER)
        _core.train_load(self._desc, self.n_params, batch, FLAG_INFER, params, None, arena)
        logits = np.empty((x2.shape[0], self.n_classes), dtype=np.float32)
        _core.net_forward(self._desc, self.n_params, batch, FLAG_INFER, x2, arena, logits.reshape(-1))
        return logits


def _all_finite(a: np.ndarray) -> bool:
    """min and max propagate NaN and expose +-Inf, without a temporary the size of `a`."""
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def _check_batch(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > 1 << 16:
        raise ValueError(f"batch_size {batch_size} is too large (at most 65536)")
    return int(batch_size)


def _flags(momentum: bool, prox: bool, weights: str) -> int:
    if weights not in ("float32", "int8"):
        raise ValueError(f"weights must be 'float32' or 'int8', got {weights!r}")
    if weights == "int8" and momentum:
        raise ValueError("momentum is not supported with weights='int8' (a float32 velocity would cost "
                         "4 bytes per parameter, the memory int8 weights save); use momentum=0")
    return (FLAG_MOMENTUM if momentum else 0) | (FLAG_PROX if prox else 0) | (FLAG_INT8 if weights == "int8" else 0)


def build(spec: str) -> Model:
    """Model for a spec: '2nn', 'cnn' or 'mlp:A-B-...-K'."""
    return Model(spec)
