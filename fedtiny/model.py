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

import re
import threading
from dataclasses import dataclass

import numpy as np

from . import _core

DENSE, CONV2D, MAXPOOL2, RELU, FLATTEN = 1, 2, 3, 4, 5
DEPTHWISE, AVGPOOL, MAXPOOL, GAP, RELU6 = 6, 7, 8, 9, 10
# Layer.kind -> engine kind (csrc/fedtiny.h ft_layer_kind); a conv1d is the engine's conv2d on a
# 1 x W x C input with a 1 x k kernel
_ENGINE_KIND = {"dense": DENSE, "conv2d": CONV2D, "conv1d": CONV2D, "maxpool2": MAXPOOL2, "relu": RELU,
                "flatten": FLATTEN, "depthwise": DEPTHWISE, "avgpool": AVGPOOL, "maxpool": MAXPOOL, "gap": GAP,
                "relu6": RELU6}
_WINDOW_KINDS = ("conv2d", "conv1d", "depthwise", "avgpool", "maxpool")

# arena flags (csrc/fedtiny.h FT_TRAIN_*, FT_LOSS_MSE)
FLAG_MOMENTUM, FLAG_PROX, FLAG_INT8, FLAG_INFER, FLAG_MSE = 1, 2, 4, 8, 16
LOSSES = ("xent", "mse")
PREDICT_BATCH = 32
INIT_SCHEMES = ("fedtiny", "pytorch")

SPEC_HELP = ("'seq:INPUT,LAYER,...' with INPUT HxWxC (image), LxC (1-D signal) or N (vector) and LAYER one of "
             "conv<oc>k<k>[x<kw>][s<stride>][same], dwk<k>[x<kw>][s<stride>][same], pool, maxpool<k>[x<kw>][s<stride>], "
             "avgpool<k>[x<kw>][s<stride>], gap, relu, relu6, flatten, dense<n>; an optional last 'mse' "
             "(see docs/training.md)")


@dataclass(frozen=True)
class Layer:
    """One layer: kind, input/output shapes (h, w, c), window (k x kw, stride, padding), and where
    its tensors live. Window kinds: conv2d, conv1d, depthwise, avgpool, maxpool."""

    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    k: int = 0
    w_offset: int = -1  # first weight in the parameter vector, -1 if none
    w_shape: tuple[int, ...] = ()
    b_offset: int = -1
    b_shape: tuple[int, ...] = ()
    kw: int = 0                      # window width (window kinds)
    stride: tuple[int, int] = (0, 0)  # (h, w) (window kinds)
    same: bool = False               # SAME padding (TensorFlow's), else VALID

    @property
    def n_params(self) -> int:
        return int(np.prod(self.w_shape) + np.prod(self.b_shape)) if self.w_shape else 0

    @property
    def pad(self) -> tuple[int, int]:
        """SAME padding before the first row and column (the smaller half, as TensorFlow)."""
        if not self.same:
            return (0, 0)
        (h, w, _), (oh, ow, _) = self.in_shape, self.out_shape
        return (max((oh - 1) * self.stride[0] + self.k - h, 0) // 2, max((ow - 1) * self.stride[1] + self.kw - w, 0) // 2)

    def describe(self) -> str:
        """The layer as an error message names it: 'conv2d 3x3 stride 2 same'."""
        if self.kind not in _WINDOW_KINDS:
            return self.kind + (f" {self.out_shape[2]}" if self.kind == "dense" else "")
        win = f"{self.kw}" if self.kind == "conv1d" else f"{self.k}x{self.kw}"
        st = self.stride[1] if self.kind == "conv1d" else (
            self.stride[0] if self.stride[0] == self.stride[1] else f"{self.stride[0]}x{self.stride[1]}")
        return f"{self.kind} {win} stride {st} {'same' if self.same else 'valid'}"


_WIN = r"(\d+)(?:x(\d+))?(?:s(\d+))?(same|valid)?"
_TOKENS = [
    ("conv", re.compile(r"conv(\d+)k" + _WIN)),
    ("dw", re.compile(r"dwk" + _WIN)),
    ("maxpool", re.compile(r"maxpool" + _WIN)),
    ("avgpool", re.compile(r"avgpool" + _WIN)),
    ("dense", re.compile(r"dense(\d+)")),
]


def _parse(spec: str) -> tuple[tuple[int, ...], list[dict], str]:
    """(input shape, layer ops, loss) of a spec."""
    if not isinstance(spec, str):
        raise ValueError(f"model spec must be a string such as '2nn', 'cnn' or 'mlp:784-64-10', got {spec!r}")
    s = spec.strip().lower()
    if s == "2nn":
        s = "mlp:784-200-200-10"
    if s == "cnn":
        return _parse_seq(spec, "28x28x1,conv32k5,relu,pool,conv64k5,relu,pool,flatten,dense128,relu,dense10")
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
        ops: list[dict] = []
        for i, n in enumerate(sizes[1:]):
            ops.append({"op": "dense", "n": n, "tok": f"dense{n}"})
            if i < len(sizes) - 2:
                ops.append({"op": "relu", "tok": "relu"})
        return (sizes[0],), ops, "xent"
    if s.startswith("seq:"):
        return _parse_seq(spec, s[4:])
    raise ValueError(f"unknown model spec {spec!r} (known: '2nn', 'cnn', 'mlp:A-B-...-K', {SPEC_HELP})")


def _parse_seq(spec: str, body: str) -> tuple[tuple[int, ...], list[dict], str]:
    """'seq:12x12x1,conv4k3,relu,pool,flatten,dense10': any chain of the supported layers."""
    toks = [t.strip() for t in body.split(",") if t.strip()]
    bad = ValueError(f"model spec {spec!r}: expected {SPEC_HELP}")
    if len(toks) < 2:
        raise bad
    try:
        shape = tuple(int(v) for v in toks[0].split("x"))
    except ValueError:
        raise bad from None
    if len(shape) not in (1, 2, 3) or min(shape) < 1:
        raise bad
    loss = "xent"
    if toks[-1] == "mse":
        loss, toks = "mse", toks[:-1]
    ops: list[dict] = []
    for i, t in enumerate(toks[1:], 1):
        if t in ("relu", "relu6", "pool", "flatten", "gap"):
            ops.append({"op": t, "tok": t})
            continue
        if t == "mse":
            raise ValueError(f"model spec {spec!r}: layer {i} 'mse' is the loss, not a layer: put it last")
        for name, rx in _TOKENS:
            mt = rx.fullmatch(t)
            if mt:
                break
        else:
            raise ValueError(f"model spec {spec!r}: layer {i} {t!r} is not a layer; expected {SPEC_HELP}")
        g = mt.groups()
        if name == "dense":
            op = {"op": "dense", "n": int(g[0])}
        else:
            if name == "conv":
                oc, g = int(g[0]), g[1:]
            k = int(g[0])
            op = {"op": name, "k": k, "kw": int(g[1]) if g[1] else None, "s": int(g[2]) if g[2] else None,
                  "same": g[3] == "same"}
            if name == "conv":
                op["oc"] = oc
            if name in ("maxpool", "avgpool") and op["same"]:
                raise ValueError(f"model spec {spec!r}: layer {i} {t!r}: pooling is VALID only (drop 'same')")
        op["tok"] = t
        if min(v for key, v in op.items() if key in ("n", "k", "kw", "s", "oc") and v is not None) < 1:
            raise ValueError(f"model spec {spec!r}: layer {i} {t!r}: sizes and strides must be >= 1")
        ops.append(op)
    if not ops or ops[-1]["op"] != "dense" or ops[-1]["n"] < 2:
        raise ValueError(f"model spec {spec!r}: the last layer must be dense with at least 2 outputs (the logits)")
    return shape, ops, loss


def _out_len(n: int, k: int, s: int, same: bool) -> int:
    return -(-n // s) if same else (n - k) // s + 1


class Model:
    """A sequential model; its parameters are one float32 vector owned by the caller."""

    def __init__(self, spec: str, *, _parsed: tuple | None = None):
        self.imported = None  # fedtiny.tflite.reader.Imported when built from a .tflite file
        if _parsed is None and isinstance(spec, str) and spec.strip().lower().endswith(".tflite"):
            from .tflite.reader import read_tflite  # the schema package only when a file is named
            self.imported = read_tflite(spec.strip())
            try:
                _parsed = _parse(self.imported.spec)
            except ValueError as exc:
                raise ValueError(f"{spec}: {exc}") from None
        input_shape, ops, loss = _parse(spec) if _parsed is None else _parsed
        self.spec = spec
        self.loss: str = loss
        self.loss_flag: int = FLAG_MSE if loss == "mse" else 0  # ORed into every training arena's flags
        self.input_shape: tuple[int, ...] = input_shape
        one_d = len(input_shape) == 2
        shape = input_shape if len(input_shape) == 3 else (1,) + input_shape if one_d else (1, 1, input_shape[0])
        layers: list[Layer] = []
        off = 0
        for i, op in enumerate(ops, 1):
            h, w, c = shape
            kind = op["op"]
            if kind in ("conv", "dw", "maxpool", "avgpool") or (kind == "pool" and one_d):
                if kind == "pool":
                    op = {"op": "maxpool", "k": 2, "kw": None, "s": None, "same": False, "tok": "pool"}
                    kind = "maxpool"
                if one_d and op["kw"] is not None:
                    raise ValueError(f"model spec {spec!r}: layer {i} {op['tok']!r}: a 1-D input takes a "
                                     f"single window size (e.g. conv16k5)")
                if len(input_shape) == 1:
                    raise ValueError(f"model spec {spec!r}: layer {i} {op['tok']!r} needs an HxWxC or LxC input, "
                                     f"the input is the vector {input_shape[0]}")
                if h == 1 and w == 1 and kind != "pool":
                    raise ValueError(f"model spec {spec!r}: layer {i} {op['tok']!r} after a flat shape "
                                     f"{h}x{w}x{c}")
                pool = kind in ("maxpool", "avgpool")
                kh, kw = (1, op["k"]) if one_d else (op["k"], op["kw"] or op["k"])
                st = op["s"] or (op["k"] if pool else 1)
                stride = (1, st) if one_d else (st, st)
                lkind = {"conv": "conv1d" if one_d else "conv2d", "dw": "depthwise"}.get(kind, kind)
                oc = op.get("oc", c)
                proto = Layer(lkind, shape, (0, 0, oc), kh, kw=kw, stride=stride, same=op["same"])
                if not op["same"] and (kh > h or kw > w):
                    raise ValueError(f"model spec {spec!r}: layer {i} ({proto.describe()}): the window does "
                                     f"not fit input {h}x{w}x{c}; use a smaller window or 'same'")
                o = (_out_len(h, kh, stride[0], op["same"]), _out_len(w, kw, stride[1], op["same"]), oc)
                if lkind in ("conv2d", "conv1d"):
                    lay = Layer(lkind, shape, o, kh, off, (oc, kh, kw, c), off + oc * kh * kw * c, (oc,),
                                kw=kw, stride=stride, same=op["same"])
                elif lkind == "depthwise":
                    lay = Layer(lkind, shape, o, kh, off, (c, kh, kw), off + c * kh * kw, (c,),
                                kw=kw, stride=stride, same=op["same"])
                else:
                    lay = Layer(lkind, shape, o, kh, kw=kw, stride=stride)
            elif kind == "dense":
                if (h, w) != (1, 1):
                    raise ValueError(f"model spec {spec!r}: layer {i} (dense {op['n']}): dense layer after a "
                                     f"non-flat shape {shape}; put flatten or gap before it")
                out = op["n"]
                lay = Layer("dense", shape, (1, 1, out), 0, off, (out, c), off + out * c, (out,))
            elif kind == "pool":
                if h < 2 or w < 2:
                    raise ValueError(f"model spec {spec!r}: layer {i} (pool): 2x2 pooling needs an input of at "
                                     f"least 2x2, got {shape}")
                lay = Layer("maxpool2", shape, (h // 2, w // 2, c))
            elif kind in ("relu", "relu6"):
                lay = Layer(kind, shape, shape)
            elif kind == "gap":
                lay = Layer("gap", shape, (1, 1, c))
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
        rows = [[_ENGINE_KIND[lay.kind], *lay.in_shape, *lay.out_shape, lay.k, lay.w_offset, lay.b_offset,
                 lay.kw, lay.stride[0], lay.stride[1], int(lay.same)] for lay in layers]
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
            line = f"{lay.kind} {h}x{w}x{c} -> {oh}x{ow}x{oc} k{lay.k}"
            # the seed kinds' lines are as they were (stride-1 VALID square conv2d, maxpool2, ...);
            # every other window adds its width, strides and padding
            plain = lay.kind == "conv2d" and lay.kw == lay.k and lay.stride == (1, 1) and not lay.same
            if lay.kind in _WINDOW_KINDS and not plain:
                line = (f"{lay.kind} {h}x{w}x{c} -> {oh}x{ow}x{oc} k{lay.k}x{lay.kw} "
                        f"s{lay.stride[0]}x{lay.stride[1]} {'same' if lay.same else 'valid'}")
            lines.append(line)
        if self.loss != "xent":
            lines.append(f"loss {self.loss}")
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
        if self.imported is not None:  # a model read from a .tflite file starts from the file's weights
            if self.imported.params.size != self.n_params:
                raise ValueError(f"{self.spec}: the file holds {self.imported.params.size} parameters, "
                                 f"its layers need {self.n_params}")
            return self.imported.params.copy()
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
        return 4 * self._arena_floats(_check_batch(batch_size), _flags(momentum, prox, weights) | self.loss_flag)

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
    """Model for a spec: '2nn', 'cnn', 'mlp:A-B-...-K', 'seq:...', or a float .tflite file (FILE.tflite:
    its layers, and its weights as init())."""
    return Model(spec)
