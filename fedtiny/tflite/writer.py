"""TFLite flatbuffer writer for fedtiny models: float32 and full-integer int8, no TensorFlow.

A model is a list of layers in the order of fedtiny's flat parameter vector (see the model
conventions in fedtiny.model): each layer's weight then its bias, Dense weights W[out][in],
Conv2D weights W[out_c][kh][kw][in_c] (TFLite OHWI), stride 1, VALID padding, MaxPool 2x2
stride 2, Flatten of NHWC in (h, w, c) order.  The writer lowers it to a TFLite graph
(CONV_2D, FULLY_CONNECTED, MAX_POOL_2D, RESHAPE, RELU, SOFTMAX; QUANTIZE / DEQUANTIZE around
an int8 graph) and serializes it with the schema code of the `tflite` package and `flatbuffers`.

Layers are plain tuples so any model description can be lowered to them:
  ("dense", n_in, n_out)            ("conv2d", out_c, kh, kw, in_c[, stride_h, stride_w, same])
  ("depthwise", c, kh, kw, stride_h, stride_w, same)     (DEPTHWISE_CONV_2D, multiplier 1)
  ("avgpool", kh, kw, stride_h, stride_w)   ("maxpool", kh, kw, stride_h, stride_w)   (VALID)
  ("gap",)  (MEAN over H and W)   ("relu",)   ("relu6",)   ("maxpool2d",)   ("flatten",)
(same is 1 for SAME padding, 0 for VALID). A ReLU or ReLU6 right after a Dense, Conv2D or
depthwise conv is fused into it (TFLite fused_activation_function). A 1-D model is exported as
height-1 2-D: its input is (1, L, C).

int8 follows the TFLite quantization spec: activations int8 asymmetric per tensor, Conv2D
weights int8 symmetric per output channel (quantized_dimension 0), Dense weights int8
symmetric per tensor (the spec's FULLY_CONNECTED form, which every TFLite runtime runs,
including tflite-runtime 2.14 on a Raspberry Pi), biases int32 with scale
input_scale * weight_scale and zero point 0.  Activation ranges come from calibration
(see fedtiny.tflite.export_tflite); this module only turns ranges into scales.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

LAYER_KINDS = ("dense", "conv2d", "relu", "maxpool2d", "flatten", "depthwise", "avgpool", "maxpool", "gap", "relu6")
_ARITY = {"dense": (3,), "conv2d": (5, 8), "depthwise": (7,), "avgpool": (5,), "maxpool": (5,)}
_SCHEMA_VERSION = 3
_BUFFER_ALIGN = 16  # weights are read in place by the interpreter; keep them SIMD-aligned


def _schema():
    """The generated TFLite schema code (PyPI package `tflite`), imported on first use."""
    try:
        import flatbuffers  # noqa: F401
        import tflite
    except ImportError as exc:
        raise ImportError(
            f"TFLite export needs the 'tflite' (schema code) and 'flatbuffers' packages ({exc}); "
            "install them with: pip install 'fedtiny[tflite]'") from None
    return tflite


# --------------------------------------------------------------------------- graph

@dataclasses.dataclass
class Tensor:
    """One tensor of the graph; shape includes the batch dimension (1, resized at run time)."""
    name: str
    shape: tuple[int, ...]
    kind: str                       # "act" (activation), "weight", "bias", "shape"
    data: np.ndarray | None = None  # constant tensors only (float32, or int32 for "shape")
    channel_axis: int | None = None  # weights quantized per channel along this axis


@dataclasses.dataclass
class Op:
    """One operator; `code` is a BuiltinOperator name, e.g. "CONV_2D"."""
    code: str
    inputs: list[int]
    outputs: list[int]
    relu: bool = False
    new_shape: tuple[int, ...] | None = None  # RESHAPE
    relu6: bool = False
    window: tuple[int, int, int, int, int] | None = None  # (kh, kw, stride_h, stride_w, same): convs, pools


@dataclasses.dataclass
class Graph:
    """A lowered model: tensors, operators in execution order, one input and one output."""
    tensors: list[Tensor]
    ops: list[Op]
    input: int
    output: int

    def activations(self) -> list[int]:
        """Indices of every activation tensor, in execution order (input first)."""
        return [self.input] + [o for op in self.ops for o in op.outputs]


def _shape_after(layer: tuple, shape: tuple[int, ...], index: int) -> tuple[int, ...]:
    kind = layer[0]
    if kind == "dense":
        n_in, n_out = layer[1], layer[2]
        if math.prod(shape) != n_in:
            raise ValueError(f"layer {index} (dense {n_in}->{n_out}): input has shape {shape}, "
                             f"{math.prod(shape)} values, not {n_in}")
        return (n_out,)
    if kind in ("conv2d", "depthwise", "avgpool", "maxpool"):
        kh, kw, sh, sw, same = _window(layer)
        c_in = layer[4] if kind == "conv2d" else layer[1] if kind == "depthwise" else shape[-1]
        c_out = layer[1] if kind in ("conv2d", "depthwise") else c_in
        if len(shape) != 3 or shape[2] != c_in:
            raise ValueError(f"layer {index} ({kind} {kh}x{kw}, {c_in}->{c_out} channels): "
                             f"input shape {shape} is not (H, W, {c_in})")
        if same:
            return (-(-shape[0] // sh), -(-shape[1] // sw), c_out)
        h, w = (shape[0] - kh) // sh + 1, (shape[1] - kw) // sw + 1
        if shape[0] < kh or shape[1] < kw:
            raise ValueError(f"layer {index} ({kind} {kh}x{kw}): input {shape} is smaller than the kernel/window")
        return (h, w, c_out)
    if kind == "gap":
        if len(shape) != 3:
            raise ValueError(f"layer {index} (gap): input shape {shape} is not (H, W, C)")
        return (shape[2],)
    if kind == "relu6":
        return shape
    if kind == "maxpool2d":
        if len(shape) != 3 or shape[0] < 2 or shape[1] < 2:
            raise ValueError(f"layer {index} (maxpool2d 2x2): input shape {shape} is not (H>=2, W>=2, C)")
        return (shape[0] // 2, shape[1] // 2, shape[2])
    if kind == "flatten":
        return (math.prod(shape),)
    if kind == "relu":
        return shape
    raise ValueError(f"layer {index}: unsupported layer kind {kind!r} (TFLite export supports "
                     f"{', '.join(LAYER_KINDS)})")


def _check_layer(layer, index: int) -> tuple:
    if not isinstance(layer, (tuple, list)) or not layer or layer[0] not in LAYER_KINDS:
        kind = layer[0] if isinstance(layer, (tuple, list)) and layer else layer
        raise ValueError(f"layer {index}: unsupported layer {kind!r} (TFLite export supports "
                         f"{', '.join(LAYER_KINDS)})")
    arity = _ARITY.get(layer[0], (1,))
    # every size is a positive int; the trailing `same` flag of the window layers is 0 or 1
    vals = list(layer[1:])
    flag = layer[0] in ("conv2d", "depthwise") and len(layer) == arity[-1] and len(layer) > 5
    if (len(layer) not in arity or not all(isinstance(v, (int, np.integer)) for v in vals)
            or not all(v > 0 for v in (vals[:-1] if flag else vals)) or (flag and vals[-1] not in (0, 1))):
        raise ValueError(f"layer {index}: {tuple(layer)!r} is not ({layer[0]!r}"
                         f"{', positive ints' if arity[0] > 1 else ''}) with {' or '.join(str(a - 1) for a in arity)} sizes")
    return (layer[0],) + tuple(int(v) for v in layer[1:])


def _window(layer: tuple) -> tuple[int, int, int, int, int]:
    """(kh, kw, stride_h, stride_w, same) of a window layer tuple."""
    kind = layer[0]
    if kind == "conv2d":
        return (layer[2], layer[3]) + (tuple(layer[5:8]) if len(layer) == 8 else (1, 1, 0))
    if kind == "depthwise":
        return tuple(layer[2:7])
    return tuple(layer[1:5]) + (0,)


def n_params(layers: Sequence[tuple]) -> int:
    """Length of the flat parameter vector of `layers` (weights then bias, layer by layer)."""
    total = 0
    for i, layer in enumerate(layers):
        layer = _check_layer(layer, i)
        if layer[0] == "dense":
            total += layer[1] * layer[2] + layer[2]
        elif layer[0] == "conv2d":
            total += math.prod(layer[1:5]) + layer[1]
        elif layer[0] == "depthwise":
            total += layer[1] * layer[2] * layer[3] + layer[1]
    return total


def build_graph(layers: Sequence[tuple], input_shape: Sequence[int], params: np.ndarray,
                *, softmax: bool = False) -> Graph:
    """Lower `layers` with their flat float32 `params` to a TFLite graph (float32 weights)."""
    layers = [_check_layer(layer, i) for i, layer in enumerate(layers)]
    if not layers:
        raise ValueError("cannot export a model with no layers")
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"input_shape {input_shape} must be non-empty positive sizes")
    params = np.asarray(params)
    if params.ndim != 1 or params.dtype != np.float32:
        raise ValueError(f"params must be a 1-D float32 vector, got {params.dtype} of shape {params.shape}")
    expected = n_params(layers)
    if params.size != expected:
        raise ValueError(f"params has {params.size} values but the layers need {expected}")
    if not np.all(np.isfinite(params)):
        raise ValueError(f"params has {int(np.sum(~np.isfinite(params)))} non-finite values (NaN/inf)")

    tensors = [Tensor("input", (1,) + input_shape, "act")]
    ops: list[Op] = []
    cur, shape, offset = 0, input_shape, 0

    def const(name, data, kind, channel_axis=None):
        tensors.append(Tensor(name, tuple(data.shape), kind, data, channel_axis))
        return len(tensors) - 1

    def act(name, shp):
        tensors.append(Tensor(name, (1,) + tuple(shp), "act"))
        return len(tensors) - 1

    for i, layer in enumerate(layers):
        kind = layer[0]
        out_shape = _shape_after(layer, shape, i)
        if kind in ("dense", "conv2d", "depthwise"):
            w_shape = (layer[2], layer[1]) if kind == "dense" else layer[1:5] if kind == "conv2d" else layer[1:4]
            n_w = math.prod(w_shape)
            w = params[offset:offset + n_w].reshape(w_shape)
            if kind == "depthwise":  # fedtiny W[c][kh][kw] -> TFLite [1][kh][kw][c]
                w = np.ascontiguousarray(w.transpose(1, 2, 0))[None]
            b = params[offset + n_w:offset + n_w + w_shape[0]]
            offset += n_w + w_shape[0]
            src = cur
            if kind == "dense" and len(shape) != 1:
                # a Dense fed an (H, W, C) activation reads it C-order, as Flatten would
                src = act(f"layer{i}_flatten", (math.prod(shape),))
                ops.append(Op("RESHAPE", [cur, const(f"layer{i}_flatten_shape",
                              np.array([-1, math.prod(shape)], np.int32), "shape")], [src],
                              new_shape=(-1, math.prod(shape))))
            wi = const(f"layer{i}_{kind}_weight", w, "weight",
                       {"conv2d": 0, "depthwise": 3}.get(kind))
            bi = const(f"layer{i}_{kind}_bias", b, "bias")
            nxt_kind = layers[i + 1][0] if i + 1 < len(layers) else None
            fuse = nxt_kind if nxt_kind in ("relu", "relu6") else None
            cur = act(f"layer{i}_{kind}" + (f"_{fuse}" if fuse else ""), out_shape)
            code = {"conv2d": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "dense": "FULLY_CONNECTED"}[kind]
            ops.append(Op(code, [src, wi, bi], [cur], relu=fuse == "relu", relu6=fuse == "relu6",
                          window=_window(layer) if kind != "dense" else None))
        elif kind in ("relu", "relu6"):
            if ops and (ops[-1].relu or ops[-1].relu6) and ops[-1].outputs == [cur]:
                continue  # fused into the layer before
            nxt = act(f"layer{i}_{kind}", out_shape)
            ops.append(Op(kind.upper(), [cur], [nxt]))
            cur = nxt
        elif kind in ("avgpool", "maxpool"):
            nxt = act(f"layer{i}_{kind}", out_shape)
            ops.append(Op("AVERAGE_POOL_2D" if kind == "avgpool" else "MAX_POOL_2D", [cur], [nxt],
                          window=_window(layer)))
            cur = nxt
        elif kind == "gap":
            nxt = act(f"layer{i}_gap", out_shape)
            ops.append(Op("MEAN", [cur, const(f"layer{i}_gap_axes", np.array([1, 2], np.int32), "shape")], [nxt]))
            cur = nxt
        elif kind == "maxpool2d":
            nxt = act(f"layer{i}_maxpool", out_shape)
            ops.append(Op("MAX_POOL_2D", [cur], [nxt]))
            cur = nxt
        elif kind == "flatten":
            if len(shape) == 1:
                continue
            nxt = act(f"layer{i}_flatten", out_shape)
            ops.append(Op("RESHAPE", [cur, const(f"layer{i}_flatten_shape",
                          np.array([-1, out_shape[0]], np.int32), "shape")], [nxt],
                          new_shape=(-1, out_shape[0])))
            cur = nxt
        shape = out_shape
    if softmax:
        if len(shape) != 1:
            raise ValueError(f"softmax needs a 1-D output, the model's output has shape {shape}")
        nxt = act("softmax", shape)
        ops.append(Op("SOFTMAX", [cur], [nxt]))
        cur = nxt
    if not ops:
        raise ValueError("the layers lower to no TFLite operator (only flatten/relu of the input?)")
    return Graph(tensors, ops, 0, cur)


# --------------------------------------------------------------------------- quantization

@dataclasses.dataclass(frozen=True)
class QParams:
    """Affine quantization of one tensor: real = scale * (q - zero_point)."""
    scale: np.ndarray       # float32, one per tensor or one per channel
    zero_point: np.ndarray  # int64, same length
    axis: int = 0


def activation_qparams(lo: float, hi: float) -> QParams:
    """int8 asymmetric parameters covering [lo, hi] (widened to contain 0, as TFLite does)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"calibration range [{lo}, {hi}] is not finite")
    if hi - lo < 1e-12:
        hi = lo + 1e-6  # an all-zero activation still needs a positive scale
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return QParams(np.array([scale], np.float32), np.array([zero_point], np.int64))


def _symmetric_scales(w: np.ndarray, per_channel: bool) -> np.ndarray:
    amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1) if per_channel else np.array([np.abs(w).max()])
    amax = amax.astype(np.float64)
    amax[amax == 0] = 1.0  # an all-zero channel quantizes to zeros with any scale
    return (amax / 127.0).astype(np.float32)


def quantize_graph(graph: Graph, ranges: Mapping[int, tuple[float, float]]) -> dict[int, tuple]:
    """int8 data and parameters of every tensor: {tensor index: (tensor type, data | None, QParams)}.

    `ranges` maps each activation tensor index to its calibrated (min, max).
    """
    out: dict[int, tuple] = {}
    missing = [i for i in graph.activations() if i not in ranges]
    if missing:
        raise ValueError(f"no calibration range for activation tensors {missing}")
    for i in graph.activations():
        out[i] = ("INT8", None, activation_qparams(*ranges[i]))
    for op in graph.ops:
        src = op.inputs[0]
        if op.code in ("MAX_POOL_2D", "RESHAPE", "AVERAGE_POOL_2D"):
            out[op.outputs[0]] = out[src]  # TFLite requires the input's scale and zero point
        elif op.code == "SOFTMAX":
            out[op.outputs[0]] = ("INT8", None, QParams(np.array([1 / 256], np.float32),
                                                        np.array([-128], np.int64)))
    for op in graph.ops:
        if op.code in ("RESHAPE", "MEAN"):
            out[op.inputs[1]] = ("INT32", graph.tensors[op.inputs[1]].data, None)
        if op.code not in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
            continue
        src, wi, bi = op.inputs
        w = graph.tensors[wi].data.astype(np.float64)
        axis = graph.tensors[wi].channel_axis
        per_channel = axis is not None
        w_scale = _symmetric_scales(np.moveaxis(w, axis, 0) if per_channel else w, per_channel)
        bshape = [1] * w.ndim
        if per_channel:
            bshape[axis] = -1
        wq = np.clip(np.rint(w / w_scale.astype(np.float64).reshape(bshape if per_channel else -1)),
                     -127, 127).astype(np.int8)
        out[wi] = ("INT8", wq, QParams(w_scale, np.zeros(w_scale.size, np.int64), axis or 0))
        in_scale = float(out[src][2].scale[0])
        b_scale = (in_scale * w_scale.astype(np.float64))
        bq = np.rint(graph.tensors[bi].data.astype(np.float64) / b_scale)
        bq = np.clip(bq, -2**31 + 1, 2**31 - 1).astype(np.int32)
        out[bi] = ("INT32", bq, QParams(b_scale.astype(np.float32), np.zeros(b_scale.size, np.int64), 0))
    return out


# --------------------------------------------------------------------------- serialization

# Minimum op versions for the tensor types used (TFLite's versioning; older runtimes check it).
_OP_VERSION_FLOAT = {"CONV_2D": 1, "FULLY_CONNECTED": 1, "MAX_POOL_2D": 1, "RESHAPE": 1,
                     "RELU": 1, "SOFTMAX": 1, "DEPTHWISE_CONV_2D": 1, "AVERAGE_POOL_2D": 1, "MEAN": 1,
                     "RELU6": 1}
_OP_VERSION_INT8 = {"CONV_2D": 3, "FULLY_CONNECTED": 4, "MAX_POOL_2D": 2, "RESHAPE": 1,
                    "RELU": 2, "SOFTMAX": 2, "QUANTIZE": 2, "DEQUANTIZE": 2, "DEPTHWISE_CONV_2D": 3,
                    "AVERAGE_POOL_2D": 2, "MEAN": 2, "RELU6": 2}


def _bytes_vector(b, data: bytes) -> int:
    b.StartVector(1, len(data), _BUFFER_ALIGN)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _int_vector(b, start, values: Iterable[int], kind: str = "int32") -> int:
    values = list(values)
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(int(v)) if kind == "int32" else b.PrependInt64(int(v))
    return b.EndVector()


def _float_vector(b, start, values: Iterable[float]) -> int:
    values = list(values)
    start(b, len(values))
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def serialize(graph: Graph, *, quant: Mapping[int, tuple] | None = None,
              outputs: Sequence[int] | None = None, description: str = "fedtiny") -> bytes:
    """The TFLite flatbuffer of `graph`: float32, or int8 when `quant` (from quantize_graph) is given.

    An int8 graph keeps a float32 input and output (QUANTIZE first, DEQUANTIZE last), so a
    caller feeds and reads it exactly like the float32 model.  `outputs` lists the tensors the
    model returns (default: the graph's output); calibration asks for every activation.
    """
    tfl = _schema()
    import flatbuffers
    outputs = [graph.output] if outputs is None else list(outputs)

    tensors = [dataclasses.replace(t) for t in graph.tensors]
    types = ["FLOAT32" if t.kind != "shape" else "INT32" for t in tensors]
    datas = [t.data for t in tensors]
    qps: list[QParams | None] = [None] * len(tensors)
    ops = list(graph.ops)
    model_in, model_outs = graph.input, outputs
    if quant is not None:
        for i, (ttype, data, qp) in quant.items():
            types[i] = ttype
            qps[i] = qp
            if data is not None:
                datas[i] = data
        # float32 edges around the int8 graph
        tensors.append(Tensor("input_float32", tensors[graph.input].shape, "act"))
        types.append("FLOAT32"); datas.append(None); qps.append(None)
        model_in = len(tensors) - 1
        ops.insert(0, Op("QUANTIZE", [model_in], [graph.input]))
        model_outs = []
        for o in outputs:
            tensors.append(Tensor(tensors[o].name + "_float32", tensors[o].shape, "act"))
            types.append("FLOAT32"); datas.append(None); qps.append(None)
            ops.append(Op("DEQUANTIZE", [o], [len(tensors) - 1]))
            model_outs.append(len(tensors) - 1)

    versions = _OP_VERSION_INT8 if quant is not None else _OP_VERSION_FLOAT
    codes = sorted({op.code for op in ops}, key=lambda c: [o.code for o in ops].index(c))
    b = flatbuffers.Builder(1 << 16)

    # buffers: 0 is the empty sentinel every TFLite model has; one per constant tensor
    buffer_of = {}
    buffer_offsets = []
    tfl.BufferStart(b)
    buffer_offsets.append(tfl.BufferEnd(b))
    for i, data in enumerate(datas):
        if data is None:
            continue
        raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
        vec = _bytes_vector(b, raw)
        tfl.BufferStart(b)
        tfl.BufferAddData(b, vec)
        buffer_of[i] = len(buffer_offsets)
        buffer_offsets.append(tfl.BufferEnd(b))

    tensor_offsets = []
    for i, t in enumerate(tensors):
        name = b.CreateString(t.name)
        shape = _int_vector(b, tfl.TensorStartShapeVector, t.shape)
        signature = None
        if t.kind == "act":
            signature = _int_vector(b, tfl.TensorStartShapeSignatureVector, (-1,) + t.shape[1:])
        qoff = None
        if qps[i] is not None:
            qp = qps[i]
            scale = _float_vector(b, tfl.QuantizationParametersStartScaleVector, qp.scale)
            zp = _int_vector(b, tfl.QuantizationParametersStartZeroPointVector, qp.zero_point, "int64")
            tfl.QuantizationParametersStart(b)
            tfl.QuantizationParametersAddScale(b, scale)
            tfl.QuantizationParametersAddZeroPoint(b, zp)
            tfl.QuantizationParametersAddQuantizedDimension(b, qp.axis)
            qoff = tfl.QuantizationParametersEnd(b)
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape)
        if signature is not None:
            tfl.TensorAddShapeSignature(b, signature)
        tfl.TensorAddType(b, getattr(tfl.TensorType, types[i]))
        tfl.TensorAddBuffer(b, buffer_of.get(i, 0))
        tfl.TensorAddName(b, name)
        if qoff is not None:
            tfl.TensorAddQuantization(b, qoff)
        tensor_offsets.append(tfl.TensorEnd(b))

    op_offsets = []
    for op in ops:
        opt_type, opt = _options(b, tfl, op)
        ins = _int_vector(b, tfl.OperatorStartInputsVector, op.inputs)
        outs = _int_vector(b, tfl.OperatorStartOutputsVector, op.outputs)
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, codes.index(op.code))
        tfl.OperatorAddInputs(b, ins)
        tfl.OperatorAddOutputs(b, outs)
        if opt is not None:
            tfl.OperatorAddBuiltinOptionsType(b, opt_type)
            tfl.OperatorAddBuiltinOptions(b, opt)
        op_offsets.append(tfl.OperatorEnd(b))

    def table_vector(start, offsets):
        start(b, len(offsets))
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    sg_tensors = table_vector(tfl.SubGraphStartTensorsVector, tensor_offsets)
    sg_ops = table_vector(tfl.SubGraphStartOperatorsVector, op_offsets)
    sg_in = _int_vector(b, tfl.SubGraphStartInputsVector, [model_in])
    sg_out = _int_vector(b, tfl.SubGraphStartOutputsVector, model_outs)
    sg_name = b.CreateString("main")
    tfl.SubGraphStart(b)
    tfl.SubGraphAddTensors(b, sg_tensors)
    tfl.SubGraphAddInputs(b, sg_in)
    tfl.SubGraphAddOutputs(b, sg_out)
    tfl.SubGraphAddOperators(b, sg_ops)
    tfl.SubGraphAddName(b, sg_name)
    subgraph = tfl.SubGraphEnd(b)

    code_offsets = []
    for code in codes:
        value = getattr(tfl.BuiltinOperator, code)
        tfl.OperatorCodeStart(b)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(value, 127))
        tfl.OperatorCodeAddBuiltinCode(b, value)
        tfl.OperatorCodeAddVersion(b, versions[code])
        code_offsets.append(tfl.OperatorCodeEnd(b))

    m_codes = table_vector(tfl.ModelStartOperatorCodesVector, code_offsets)
    m_subgraphs = table_vector(tfl.ModelStartSubgraphsVector, [subgraph])
    m_buffers = table_vector(tfl.ModelStartBuffersVector, buffer_offsets)
    m_desc = b.CreateString(description)
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, _SCHEMA_VERSION)
    tfl.ModelAddOperatorCodes(b, m_codes)
    tfl.ModelAddSubgraphs(b, m_subgraphs)
    tfl.ModelAddDescription(b, m_desc)
    tfl.ModelAddBuffers(b, m_buffers)
    b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _options(b, tfl, op: Op):
    act = (tfl.ActivationFunctionType.RELU if op.relu else tfl.ActivationFunctionType.RELU6 if op.relu6
           else tfl.ActivationFunctionType.NONE)
    kh, kw, sh, sw, same = op.window or (2, 2, 2, 2, 0)
    pad = tfl.Padding.SAME if same else tfl.Padding.VALID
    if op.code == "CONV_2D":
        tfl.Conv2DOptionsStart(b)
        tfl.Conv2DOptionsAddPadding(b, pad)
        tfl.Conv2DOptionsAddStrideW(b, sw)
        tfl.Conv2DOptionsAddStrideH(b, sh)
        tfl.Conv2DOptionsAddDilationWFactor(b, 1)
        tfl.Conv2DOptionsAddDilationHFactor(b, 1)
        tfl.Conv2DOptionsAddFusedActivationFunction(b, act)
        return tfl.BuiltinOptions.Conv2DOptions, tfl.Conv2DOptionsEnd(b)
    if op.code == "FULLY_CONNECTED":
        tfl.FullyConnectedOptionsStart(b)
        tfl.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        tfl.FullyConnectedOptionsAddWeightsFormat(b, tfl.FullyConnectedOptionsWeightsFormat.DEFAULT)
        tfl.FullyConnectedOptionsAddKeepNumDims(b, False)
        return tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsEnd(b)
    if op.code == "DEPTHWISE_CONV_2D":
        tfl.DepthwiseConv2DOptionsStart(b)
        tfl.DepthwiseConv2DOptionsAddPadding(b, pad)
        tfl.DepthwiseConv2DOptionsAddStrideW(b, sw)
        tfl.DepthwiseConv2DOptionsAddStrideH(b, sh)
        tfl.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
        tfl.DepthwiseConv2DOptionsAddDilationWFactor(b, 1)
        tfl.DepthwiseConv2DOptionsAddDilationHFactor(b, 1)
        tfl.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
        return tfl.BuiltinOptions.DepthwiseConv2DOptions, tfl.DepthwiseConv2DOptionsEnd(b)
    if op.code == "MEAN":
        tfl.ReducerOptionsStart(b)
        tfl.ReducerOptionsAddKeepDims(b, False)
        return tfl.BuiltinOptions.ReducerOptions, tfl.ReducerOptionsEnd(b)
    if op.code in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        tfl.Pool2DOptionsStart(b)
        tfl.Pool2DOptionsAddPadding(b, tfl.Padding.VALID)
        tfl.Pool2DOptionsAddStrideW(b, sw)
        tfl.Pool2DOptionsAddStrideH(b, sh)
        tfl.Pool2DOptionsAddFilterWidth(b, kw)
        tfl.Pool2DOptionsAddFilterHeight(b, kh)
        tfl.Pool2DOptionsAddFusedActivationFunction(b, tfl.ActivationFunctionType.NONE)
        return tfl.BuiltinOptions.Pool2DOptions, tfl.Pool2DOptionsEnd(b)
    if op.code == "RESHAPE":
        shape = _int_vector(b, tfl.ReshapeOptionsStartNewShapeVector, op.new_shape)
        tfl.ReshapeOptionsStart(b)
        tfl.ReshapeOptionsAddNewShape(b, shape)
        return tfl.BuiltinOptions.ReshapeOptions, tfl.ReshapeOptionsEnd(b)
    if op.code == "SOFTMAX":
        tfl.SoftmaxOptionsStart(b)
        tfl.SoftmaxOptionsAddBeta(b, 1.0)
        return tfl.BuiltinOptions.SoftmaxOptions, tfl.SoftmaxOptionsEnd(b)
    if op.code == "QUANTIZE":
        tfl.QuantizeOptionsStart(b)
        return tfl.BuiltinOptions.QuantizeOptions, tfl.QuantizeOptionsEnd(b)
    if op.code == "DEQUANTIZE":
        tfl.DequantizeOptionsStart(b)
        return tfl.BuiltinOptions.DequantizeOptions, tfl.DequantizeOptionsEnd(b)
    return None, None  # RELU and RELU6 have no options
