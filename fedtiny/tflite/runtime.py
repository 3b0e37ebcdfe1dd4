"""TFLite export and on-device inference: LiteRT (ai_edge_litert) or tflite_runtime, never TensorFlow.

- `export_tflite(model, params, path, int8=..., calibration=...)` writes a .tflite flatbuffer of
  a fedtiny model (the graph writer is fedtiny.tflite.writer).
- `Interpreter(path)` runs a .tflite model with whichever interpreter package is installed.
- `prepare_backbone(path, x)` is federated transfer learning (TinyFedTL): a frozen .tflite
  feature extractor turns a device's data into features, and only a dense head on them is
  trained and federated.
- HELP / add_arguments(parser) / run_command(args) are the `fedtiny export` subcommand
  (fedtiny.cli registers this module as "export").
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from . import writer as _tx

__all__ = ["Interpreter", "interpreter_backend", "export_tflite", "model_layers", "backbone_layers",
           "extract_features", "head_spec", "prepare_backbone", "backbone_dataset", "load_params",
           "load_samples"]

_NO_INTERPRETER = ("no TFLite interpreter is installed: install ai-edge-litert "
                   "(pip install 'fedtiny[tflite]'), or tflite-runtime together with numpy<2")


def _load_backend():
    """(name, Interpreter class) of the first usable package: ai_edge_litert, then tflite_runtime.

    FEDTINY_TFLITE_BACKEND=ai_edge_litert|tflite_runtime forces one (to compare them on a device).
    """
    choice = os.environ.get("FEDTINY_TFLITE_BACKEND", "").strip().lower() or "auto"
    if choice not in ("auto", "ai_edge_litert", "tflite_runtime"):
        raise ValueError(f"FEDTINY_TFLITE_BACKEND={choice!r}: expected ai_edge_litert or tflite_runtime")
    if choice in ("auto", "ai_edge_litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter as cls
            return "ai_edge_litert", cls
        except ImportError:
            if choice == "ai_edge_litert":
                raise ImportError("FEDTINY_TFLITE_BACKEND=ai_edge_litert but ai-edge-litert is not "
                                  "installed: pip install ai-edge-litert") from None
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter as cls
    except ImportError:
        raise ImportError(_NO_INTERPRETER) from None
    version = getattr(tflite_runtime, "__version__", "?")
    if _major_minor(np.__version__) >= (2, 0) and _major_minor(version) <= (2, 14):
        # its extension module was compiled against numpy 1.x: creating an interpreter fails
        # with "_ARRAY_API not found"; say so before that happens
        raise ImportError(f"tflite-runtime {version} does not work with numpy {np.__version__} "
                          "(it was built for numpy 1.x); install ai-edge-litert instead, "
                          "or numpy<2")
    return "tflite_runtime", cls


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0", "0"])[:2]
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def interpreter_backend() -> str:
    """Name of the interpreter package Interpreter will use; ImportError saying what to install."""
    return _load_backend()[0]


class Interpreter:
    """A .tflite model (path or bytes) run by ai_edge_litert, or else tflite_runtime.

    Inputs are float32 of shape (N, ...) with prod(...) == prod(input_shape), read C-order as
    in fedtiny.model; models with int8 inputs or outputs are quantized / dequantized here with
    their own parameters, so every model is fed and read in float32.
    """

    def __init__(self, model: str | os.PathLike | bytes, *, num_threads: int | None = None):
        self.backend, cls = _load_backend()
        if isinstance(model, (bytes, bytearray, memoryview)):
            content, self.name = bytes(model), "model bytes"
        else:
            self.name = os.fspath(model)
            try:
                with open(self.name, "rb") as f:
                    content = f.read()
            except OSError as exc:
                raise ValueError(f"{self.name}: cannot read TFLite model: {exc.strerror}") from None
        if len(content) < 8 or content[4:8] != b"TFL3":
            raise ValueError(f"{self.name}: not a TFLite model (no 'TFL3' flatbuffer identifier, "
                             f"{len(content)} bytes)")
        _check_structure(content, self.name)
        try:
            self._it = cls(model_content=content, num_threads=num_threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            msg = " ".join(str(exc).split())
            raise ValueError(f"{self.name}: the TFLite interpreter rejected the model: {msg}") from None
        ins = self._it.get_input_details()
        if len(ins) != 1:
            raise ValueError(f"{self.name}: model has {len(ins)} inputs; fedtiny runs one-input models")
        self._in = ins[0]
        self._outs = self._it.get_output_details()
        for d in [self._in] + self._outs:
            if d["dtype"] not in (np.float32, np.int8, np.uint8):
                raise ValueError(f"{self.name}: tensor {d['name']!r} has type "
                                 f"{np.dtype(d['dtype']).name}; fedtiny runs float32/int8 models")
        self.input_shape = tuple(int(v) for v in self._in["shape"][1:])
        self.output_shapes = [tuple(int(v) for v in d["shape"][1:]) for d in self._outs]
        self.size_bytes = len(content)
        self._batch = int(self._in["shape"][0])

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._it.resize_tensor_input(self._in["index"], [batch, *self.input_shape])
            self._it.allocate_tensors()
            self._batch = batch

    def run_all(self, x: np.ndarray, *, batch_size: int = 256) -> list[np.ndarray]:
        """Every model output for x, as float32 arrays (N, *output_shape)."""
        x = np.asarray(x)
        per = math.prod(self.input_shape)
        if x.ndim < 1 or x.size != x.shape[0] * per or x.shape[0] < 1:
            raise ValueError(f"{self.name}: input of shape {x.shape} does not hold N samples of "
                             f"{self.input_shape} ({per} values each)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = x.reshape((x.shape[0],) + self.input_shape).astype(np.float32, copy=False)
        n = x.shape[0]
        outs = [np.empty((n,) + s, np.float32) for s in self.output_shapes]
        for start in range(0, n, batch_size):
            chunk = x[start:start + batch_size]
            self._resize(chunk.shape[0])
            self._it.set_tensor(self._in["index"], _to_tensor(chunk, self._in))
            self._it.invoke()
            for o, d in zip(outs, self._outs):
                o[start:start + chunk.shape[0]] = _from_tensor(self._it.get_tensor(d["index"]), d)
        return outs

    def run(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """The model's (first) output for x, float32 (N, *output_shape)."""
        return self.run_all(x, batch_size=batch_size)[0]

    __call__ = run

    def __repr__(self) -> str:
        return (f"Interpreter({self.name!r}, backend={self.backend}, input={self.input_shape}, "
                f"outputs={self.output_shapes})")


# bytes per element of the TensorType values with a fixed element size (schema.fbs numbering;
# STRING, RESOURCE, VARIANT and the packed INT4 are not checked)
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8,
               15: 4, 16: 2, 18: 2}


def _check_structure(content: bytes, name: str) -> None:
    """Reject a model whose indices, shapes or constant sizes are inconsistent, before an
    interpreter sees it (tflite-runtime 2.14 does not verify the flatbuffer and reads past the end
    of a truncated file).  Skipped when the `tflite` schema package is not installed."""
    try:
        import tflite
    except ImportError:
        return
    try:
        problem = _structure_problem(tflite.Model.GetRootAsModel(content, 0), len(content))
    except Exception as exc:  # the generated accessors raise anything on garbage offsets
        problem = f"truncated or corrupt flatbuffer ({type(exc).__name__}: {exc})"
    if problem:
        raise ValueError(f"{name}: malformed TFLite model: {problem}")


def _ints(length: int, as_numpy) -> list[int]:
    """An int vector of a flatbuffer table (the generated accessor returns 0 when it is absent)."""
    return [int(v) for v in as_numpy()] if length else []


def _structure_problem(model, size: int) -> str | None:
    n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
    if model.SubgraphsLength() < 1:
        return "no subgraph"
    for k in range(n_buffers):
        buf = model.Buffers(k)
        field = buf._tab.Offset(4)  # Buffer.data: the one vector no accessor below reads
        end = buf._tab.Vector(field) + buf.DataLength() if field else 0
        if end > size or buf.Offset() + buf.Size() > size:
            return f"buffer {k} extends past the end of the file ({size} bytes): truncated?"
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        n_t = g.TensorsLength()
        for i in range(n_t):
            t = g.Tensors(i)
            shape = _ints(t.ShapeLength(), t.ShapeAsNumpy)
            if any(d < 0 for d in shape):
                return f"tensor {i} has a negative dimension {shape}"
            if not 0 <= t.Buffer() < n_buffers:
                return f"tensor {i} refers to buffer {t.Buffer()} of {n_buffers}"
            data = model.Buffers(t.Buffer()).DataLength() if t.Buffer() else 0
            item = _TYPE_BYTES.get(t.Type())
            if data and item and data != item * math.prod(shape):
                return (f"tensor {i} of shape {shape} has {data} bytes of constant data, "
                        f"not {item * math.prod(shape)}")
            q = t.Quantization()
            if q is not None and q.ScaleLength():
                if q.ZeroPointLength() != q.ScaleLength():
                    return f"tensor {i} has {q.ScaleLength()} scales but {q.ZeroPointLength()} zero points"
                dim = q.QuantizedDimension()
                if q.ScaleLength() > 1 and not (0 <= dim < len(shape) and shape[dim] == q.ScaleLength()):
                    return f"tensor {i} has {q.ScaleLength()} scales for dimension {dim} of {shape}"
                if not np.all(np.isfinite(q.ScaleAsNumpy())) or np.any(q.ScaleAsNumpy() <= 0):
                    return f"tensor {i} has a quantization scale that is not positive and finite"
        io = _ints(g.InputsLength(), g.InputsAsNumpy) + _ints(g.OutputsLength(), g.OutputsAsNumpy)
        if any(not 0 <= v < n_t for v in io):
            return f"subgraph {s} inputs/outputs {io} out of range (it has {n_t} tensors)"
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            if not 0 <= op.OpcodeIndex() < n_codes:
                return f"operator {k} has opcode index {op.OpcodeIndex()} of {n_codes}"
            for v in _ints(op.InputsLength(), op.InputsAsNumpy) + _ints(op.OutputsLength(), op.OutputsAsNumpy):
                if not -1 <= v < n_t:
                    return f"operator {k} uses tensor {v} (the subgraph has {n_t})"
    return None


def _to_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.ascontiguousarray(x)
    scale, zp = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(detail["dtype"])


def _from_tensor(t: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return t
    scale, zp = detail["quantization"]
    return ((t.astype(np.float32) - zp) * scale).astype(np.float32)


# --------------------------------------------------------------------------- export

def model_layers(model) -> tuple[list[tuple], tuple[int, ...]]:
    """(layer tuples for fedtiny.tflite.writer, input_shape) of a fedtiny model.

    `model` is a fedtiny.model.Model (its Layer descriptors are lowered and their parameter
    offsets checked against the layout), or any object with `.layers` already in the tuple
    form of fedtiny.tflite.writer and an `.input_shape`.
    """
    layers = list(getattr(model, "layers", None) or [])
    input_shape = tuple(getattr(model, "input_shape", ()) or ())
    if len(input_shape) == 2:  # a 1-D signal (L, C) goes out as a height-1 image (1, L, C)
        input_shape = (1,) + input_shape
    if not layers or not input_shape:
        raise ValueError(f"{type(model).__name__} has no layers/input_shape to export")
    out, offset = [], 0
    for i, layer in enumerate(layers):
        out.append(_layer_tuple(layer, i))
        if not isinstance(layer, tuple) and getattr(layer, "w_shape", ()):
            if layer.w_offset != offset or layer.b_offset != offset + math.prod(layer.w_shape):
                raise ValueError(f"layer {i} ({layer.kind}): its weights are at {layer.w_offset}, "
                                 f"the TFLite export layout expects {offset}")
        offset = _tx.n_params(out)
    return out, input_shape


def _layer_tuple(layer, index: int) -> tuple:
    """A fedtiny.model.Layer as a fedtiny.tflite.writer layer tuple."""
    if isinstance(layer, tuple):
        return layer
    kind = getattr(layer, "kind", None)
    if kind == "dense" and len(layer.w_shape) == 2:
        return ("dense", layer.w_shape[1], layer.w_shape[0])
    if kind in ("conv2d", "conv1d") and len(layer.w_shape) == 4:
        if kind == "conv2d" and layer.k == layer.kw and layer.stride == (1, 1) and not layer.same:
            return ("conv2d", *layer.w_shape)
        return ("conv2d", *layer.w_shape, *layer.stride, int(layer.same))
    if kind == "depthwise":
        return ("depthwise", *layer.w_shape, *layer.stride, int(layer.same))
    if kind in ("avgpool", "maxpool"):
        return (kind, layer.k, layer.kw, *layer.stride)
    if kind in ("maxpool2", "maxpool2d"):
        return ("maxpool2d",)
    if kind in ("relu", "relu6", "flatten", "gap"):
        return (kind,)
    raise ValueError(f"layer {index}: cannot export a {kind!r} layer to TFLite "
                     f"(supported: {', '.join(_tx.LAYER_KINDS)})")


def backbone_layers(layers: Sequence[tuple], drop_dense: int) -> list[tuple]:
    """`layers` without its last `drop_dense` Dense layers (and what follows them).

    The kept layers' parameters are a prefix of the flat vector, so the backbone's params
    are params[:writer.n_params(kept)].
    """
    if drop_dense < 0:
        raise ValueError(f"drop_dense must be >= 0, got {drop_dense}")
    if drop_dense == 0:
        return list(layers)
    dense_at = [i for i, layer in enumerate(layers) if layer[0] == "dense"]
    if drop_dense >= len(dense_at) and not any(layer[0] in ("conv2d", "depthwise") for layer in layers):
        raise ValueError(f"cannot drop {drop_dense} dense layers of a model with {len(dense_at)} "
                         "and no conv layers: nothing would remain")
    if drop_dense > len(dense_at):
        raise ValueError(f"cannot drop {drop_dense} dense layers: the model has {len(dense_at)}")
    return list(layers[:dense_at[-drop_dense]])


def export_tflite(model, params: np.ndarray, path: str | os.PathLike | None = None, *,
                  int8: bool = False, calibration: np.ndarray | None = None,
                  softmax: bool = False, drop_dense: int = 0) -> bytes:
    """The .tflite flatbuffer of `model` with flat float32 `params` (written to `path` if given).

    int8=True writes a full-integer model (int8 weights and activations, float32 input and
    output); its activation ranges are calibrated by running the float32 model over
    `calibration` (samples shaped like the model input; a few hundred representative ones).
    softmax=True appends a SOFTMAX (probabilities out instead of logits); drop_dense=k
    exports the model without its last k Dense layers, a feature extractor for
    prepare_backbone.
    """
    layers, input_shape = model_layers(model)
    if hasattr(model, "check_params"):
        model.check_params(params)  # a fedtiny.model.Model names its own parameter problems
    params = np.asarray(params)
    if params.ndim != 1 or params.dtype != np.float32:
        raise ValueError(f"params must be a 1-D float32 vector, got {params.dtype} of shape {params.shape}")
    full = _tx.n_params(layers)
    if params.size != full:
        raise ValueError(f"params has {params.size} values but the model needs {full}")
    layers = backbone_layers(layers, drop_dense)
    params = params[:_tx.n_params(layers)]
    graph = _tx.build_graph(layers, input_shape, params, softmax=softmax)
    if int8:
        if calibration is None:
            raise ValueError("int8 export needs calibration data (a few hundred input samples)")
        ranges = _calibrate(graph, calibration)
        content = _tx.serialize(graph, quant=_tx.quantize_graph(graph, ranges))
    else:
        if calibration is not None:
            raise ValueError("calibration data is only used by int8 export (int8=True)")
        content = _tx.serialize(graph)
    if path is not None:
        tmp = os.fspath(path) + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        except OSError as exc:
            raise ValueError(f"{os.fspath(path)}: cannot write the model: {exc.strerror}") from None
    return content


def _calibrate(graph: "_tx.Graph", x: np.ndarray) -> dict[int, tuple[float, float]]:
    """(min, max) of every activation of the float32 graph over the calibration samples."""
    x = np.asarray(x, dtype=np.float32)
    per = math.prod(graph.tensors[graph.input].shape[1:])
    if x.ndim < 1 or x.shape[0] < 1 or x.size != x.shape[0] * per:
        raise ValueError(f"calibration data of shape {x.shape} does not hold samples of "
                         f"{per} values (the model input)")
    if not np.all(np.isfinite(x)):
        raise ValueError("calibration data has non-finite values (NaN/inf)")
    acts = graph.activations()
    interp = Interpreter(_tx.serialize(graph, outputs=acts))
    lo = np.full(len(acts), np.inf)
    hi = np.full(len(acts), -np.inf)
    for start in range(0, x.shape[0], 256):
        outs = interp.run_all(x[start:start + 256], batch_size=256)
        lo = np.minimum(lo, [o.min() for o in outs])
        hi = np.maximum(hi, [o.max() for o in outs])
    return {t: (float(a), float(b)) for t, a, b in zip(acts, lo, hi)}


def load_params(params: str | None = None, state: str | None = None) -> np.ndarray:
    """The flat float32 parameter vector from a .npy file, or the last finished round's global
    weights in an aggregator state directory (`fedtiny aggregate --state DIR`)."""
    if (params is None) == (state is None):
        raise ValueError("give exactly one of a params file (.npy) or a state directory")
    if state is not None:
        from ..net import state as _state

        if not os.path.isdir(state):
            raise ValueError(f"{state}: not a directory (expected an aggregator state dir, fedtiny aggregate --state)")
        ckpt = _state.load(state)
        if ckpt is None:
            raise ValueError(f"{state}: holds no finished round yet (no checkpoint)")
        return ckpt.weights
    path = params
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:2] != b"PK" and magic != b"\x93NUMPY":  # .npz is a zip archive, refused below
            raise ValueError("no .npy header")
        vec = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a .npy parameter vector ({exc})") from None
    if not isinstance(vec, np.ndarray) or vec.ndim != 1 or vec.dtype != np.float32:
        what = f"{vec.dtype} array of shape {vec.shape}" if isinstance(vec, np.ndarray) else "an .npz archive"
        raise ValueError(f"{path}: expected a 1-D float32 parameter vector, got {what}")
    return vec


def load_samples(path: str, limit: int) -> np.ndarray:
    """Calibration samples: a .npy array, the 'x' array of an .npz (as fedtiny client --data),
    or the training images of a dataset fedtiny.datasets knows (e.g. "fashion-mnist")."""
    if not path.endswith((".npy", ".npz")) and not os.path.exists(path):
        try:
            from .datasets import load
        except ImportError:
            raise ValueError(f"{path}: no such file") from None
        return load(path).x_train[:limit]
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a .npy/.npz file ({exc})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "x" not in data.files:
                raise ValueError(f"{path}: .npz has no 'x' array (it has {', '.join(data.files) or 'none'})")
            data = data["x"]
    if data.dtype.kind not in "fiu":
        raise ValueError(f"{path}: calibration samples must be numeric, got {data.dtype}")
    x = data[:limit].astype(np.float32)
    if data.dtype == np.uint8:
        x /= 255.0  # raw image bytes; fedtiny models take [0, 1] pixels
    return x


# --------------------------------------------------------------------------- transfer learning

def extract_features(backbone: "str | os.PathLike | bytes | Interpreter", x: np.ndarray, *,
                     batch_size: int = 256) -> np.ndarray:
    """Features (N, feat_dim) float32 of x from a frozen .tflite feature extractor."""
    interp = backbone if isinstance(backbone, Interpreter) else Interpreter(backbone)
    feats = interp.run(x, batch_size=batch_size)
    return feats.reshape(feats.shape[0], -1)


def head_spec(feat_dim: int, hidden: Sequence[int] = (), n_classes: int = 10) -> str:
    """fedtiny model spec of a dense head on `feat_dim` features: "mlp:<feat_dim>-...-<n_classes>"."""
    sizes = [feat_dim, *hidden, n_classes]
    if any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ValueError(f"head sizes must be positive ints, got {sizes}")
    return "mlp:" + "-".join(str(int(s)) for s in sizes)


def prepare_backbone(backbone: "str | os.PathLike | bytes", x: np.ndarray, *,
                     hidden: Sequence[int] = (), n_classes: int = 10,
                     batch_size: int = 256) -> tuple[np.ndarray, str]:
    """(features of x, head model spec): what a client trains and federates with --backbone.

    The device keeps the backbone frozen: it trains fedtiny.model.build(spec) on the features
    with fedtiny.train.local_sgd, and only the head's parameters travel in the rounds.
    """
    feats = extract_features(backbone, x, batch_size=batch_size)
    return feats, head_spec(feats.shape[1], hidden, n_classes)


def backbone_dataset(backbone: "str | os.PathLike | bytes", data, *, hidden: Sequence[int] = (),
                     batch_size: int = 256):
    """(dataset of features, head spec): a fedtiny.datasets.Dataset with x_train and x_test
    replaced by the frozen backbone's features, for `fedtiny simulate --backbone`.

    The simulation then federates fedtiny.model.build(spec), the head only.
    """
    import dataclasses
    interp = Interpreter(backbone)
    f_train = extract_features(interp, data.x_train, batch_size=batch_size)
    f_test = extract_features(interp, data.x_test, batch_size=batch_size)
    name = getattr(interp, "name", "backbone")
    feats = dataclasses.replace(data, name=f"{data.name} features of {os.path.basename(name)}",
                                x_train=f_train, x_test=f_test)
    return feats, head_spec(f_train.shape[1], hidden, data.n_classes)
