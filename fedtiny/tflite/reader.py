"""Read a float32 .tflite model as a fedtiny model spec and its parameter vector.

`read_tflite(path)` walks the one subgraph's operators as a chain (each operator reads the
previous one's output) and lowers each to the `seq:` grammar of fedtiny.model:
  CONV_2D -> conv<oc>k<kh>[x<kw>][s<s>][same]   DEPTHWISE_CONV_2D (multiplier 1) -> dwk...
  MAX_POOL_2D / AVERAGE_POOL_2D (VALID) -> pool, maxpool..., avgpool...   MEAN over H, W -> gap
  FULLY_CONNECTED -> [flatten,] dense<n>   RESHAPE to (batch, n) -> flatten (nothing for 1x1xC)
  RELU, RELU6 -> relu, relu6
  fused RELU / RELU6 activations -> relu, relu6 after the layer;  a last SOFTMAX is dropped
  (fedtiny trains logits with softmax cross-entropy) and remembered, so export puts it back.
A height-1 input whose windows are all 1 high becomes a 1-D model (input LxC). Weights come out
in fedtiny's interchange layout (Conv2D OHWI as TFLite stores it, depthwise [c][kh][kw] from
TFLite's [1][kh][kw][c], Dense [out][in]); a missing bias is zeros. Anything else -- another
operator, int8 tensors, dilation, a depth multiplier, a branch -- is refused with a ValueError that
names the operator and its index.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .writer import _schema


@dataclass(frozen=True)
class Imported:
    """A .tflite model as fedtiny sees it."""

    spec: str            # a 'seq:' spec of the same architecture
    params: np.ndarray   # float32, interchange layout
    softmax: bool        # the file ended in SOFTMAX (dropped for training, put back on export)


SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN",
             "RESHAPE", "RELU", "RELU6", "SOFTMAX")


def read_tflite(path: str | os.PathLike) -> Imported:
    """The spec and parameters of a float32 .tflite file; ValueError naming what is unsupported."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read model file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    return read_tflite_bytes(content, os.fspath(path))


def read_tflite_bytes(content: bytes, name: str = "model") -> Imported:
    tfl = _schema()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(f"{name}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = tfl.Model.GetRootAsModel(content, 0)
        if model.SubgraphsLength() != 1:
            raise ValueError(f"{name}: {model.SubgraphsLength()} subgraphs; fedtiny imports single-subgraph models")
        return _Reader(tfl, model, name).read()
    except ValueError:
        raise
    except Exception as exc:  # a truncated or corrupt flatbuffer raises anything from struct/IndexError
        raise ValueError(f"{name}: malformed TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


class _Reader:
    def __init__(self, tfl, model, name):
        self.tfl, self.model, self.name = tfl, model, name
        self.g = model.Subgraphs(0)
        self.codes = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
        self.acts = {v: k for k, v in vars(tfl.ActivationFunctionType).items() if not k.startswith("_")}
        self.types = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}

    def fail(self, i, code, why):
        raise ValueError(f"{self.name}: operator {i} ({code}): {why}")

    def shape(self, t):
        return tuple(int(v) for v in self.g.Tensors(t).ShapeAsNumpy())

    def const(self, t):
        """The float32 data of a constant tensor."""
        ten = self.g.Tensors(t)
        data = self.model.Buffers(ten.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            raise ValueError(f"{self.name}: tensor {ten.Name().decode(errors='replace')!r} has no constant data")
        dt = {"FLOAT32": "<f4", "INT32": "<i4"}.get(self.types.get(ten.Type()))
        if dt is None:
            raise ValueError(f"{self.name}: tensor {ten.Name().decode(errors='replace')!r} is "
                             f"{self.types.get(ten.Type())}; fedtiny imports float32 models only")
        return np.frombuffer(bytes(data), dtype=dt).reshape(self.shape(t)).astype(np.float32 if dt == "<f4" else np.int32)

    def options(self, op, cls):
        tab = op.BuiltinOptions()
        o = getattr(self.tfl, cls)()
        if tab is not None:
            o.Init(tab.Bytes, tab.Pos)
        return o

    def read(self):
        tfl, g = self.tfl, self.g
        if g.InputsLength() != 1 or g.OutputsLength() != 1:
            raise ValueError(f"{self.name}: {g.InputsLength()} inputs and {g.OutputsLength()} outputs; "
                             f"fedtiny imports one input, one output")
        cur = g.Inputs(0)
        ishape = self.shape(cur)
        if self.types.get(g.Tensors(cur).Type()) != "FLOAT32":
            raise ValueError(f"{self.name}: the input is {self.types.get(g.Tensors(cur).Type())}; "
                             f"fedtiny imports float32 models only")
        if len(ishape) not in (2, 4):
            raise ValueError(f"{self.name}: input shape {ishape}: expected (batch, N) or (batch, H, W, C)")
        toks: list[str] = []
        wins: list[int] = []  # window heights, to tell a 1-D model
        params: list[np.ndarray] = []
        shape = ishape[1:]
        softmax = False
        n_ops = g.OperatorsLength()
        for i in range(n_ops):
            op = g.Operators(i)
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            code = self.codes.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM")
            if code not in SUPPORTED:
                self.fail(i, code, f"unsupported operator; fedtiny imports {', '.join(SUPPORTED)}")
            ins = [op.Inputs(k) for k in range(op.InputsLength())]
            if not ins or ins[0] != cur or op.OutputsLength() != 1:
                self.fail(i, code, "the model is not a chain (this operator does not read the previous output)")
            out = op.Outputs(0)
            if softmax:
                self.fail(i, code, "SOFTMAX must be the last operator")
            act = None
            if code in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                dw = code == "DEPTHWISE_CONV_2D"
                o = self.options(op, "DepthwiseConv2DOptions" if dw else "Conv2DOptions")
                if o.DilationHFactor() not in (0, 1) or o.DilationWFactor() not in (0, 1):
                    self.fail(i, code, "dilation is not supported")
                if dw and o.DepthMultiplier() not in (0, 1):
                    self.fail(i, code, f"depth multiplier {o.DepthMultiplier()} (fedtiny: 1)")
                w = self.const(ins[1])
                b = self.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
                if dw:
                    _, kh, kw, c = w.shape
                    w = np.ascontiguousarray(w[0].transpose(2, 0, 1))
                else:
                    c, kh, kw, _ = w.shape
                sh, sw = o.StrideH(), o.StrideW()
                same = o.Padding() == tfl.Padding.SAME
                if sh != sw and not (shape[0] == 1 and kh == 1):
                    self.fail(i, code, f"strides {sh}x{sw} differ (fedtiny: one stride for both axes)")
                tok = (f"conv{c}k{kh}" if not dw else f"dwk{kh}") + (f"x{kw}" if kw != kh else "")
                tok += (f"s{sw}" if sw != 1 else "") + ("same" if same else "")
                toks.append(tok)
                wins.append(kh)
                params += [w.ravel(), (b if b is not None else np.zeros(c, np.float32)).ravel()]
                act = o.FusedActivationFunction()
            elif code in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                o = self.options(op, "Pool2DOptions")
                if o.Padding() == tfl.Padding.SAME:
                    self.fail(i, code, "SAME padding (fedtiny pools are VALID)")
                kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
                if sh != sw and not (shape[0] == 1 and kh == 1):
                    self.fail(i, code, f"strides {sh}x{sw} differ (fedtiny: one stride for both axes)")
                name = "maxpool" if code == "MAX_POOL_2D" else "avgpool"
                if name == "maxpool" and (kh, kw, sh, sw) == (2, 2, 2, 2):
                    toks.append("pool")
                else:
                    toks.append(f"{name}{kh}" + (f"x{kw}" if kw != kh else "") + (f"s{sw}" if sw != kw else ""))
                wins.append(kh)
                act = o.FusedActivationFunction()
            elif code == "MEAN":
                axes = sorted(int(a) % 4 for a in self.const(ins[1]).ravel())
                if len(shape) != 3 or axes != [1, 2]:
                    self.fail(i, code, f"only the mean over height and width (global average pooling) is "
                                       f"supported, got axes {axes}")
                toks.append("gap")
            elif code == "RESHAPE":
                oshape = self.shape(out)
                if len(oshape) != 2:
                    self.fail(i, code, f"reshape to {oshape}: only flattening to (batch, n) is supported")
                if len(shape) == 3 and shape[:2] != (1, 1):  # flattening a 1x1xC map changes nothing
                    toks.append("flatten")
            elif code == "FULLY_CONNECTED":
                o = self.options(op, "FullyConnectedOptions")
                w = self.const(ins[1])
                b = self.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
                if len(shape) != 1 and (not toks or toks[-1] not in ("flatten", "gap")):
                    toks.append("flatten")
                toks.append(f"dense{w.shape[0]}")
                params += [w.ravel(), (b if b is not None else np.zeros(w.shape[0], np.float32)).ravel()]
                act = o.FusedActivationFunction()
            elif code in ("RELU", "RELU6"):
                toks.append(code.lower())
            elif code == "SOFTMAX":
                if i != n_ops - 1:
                    self.fail(i, code, "SOFTMAX must be the last operator")
                softmax = True
            if act is not None:
                a = self.acts.get(act, str(act))
                if a not in ("NONE", "RELU", "RELU6"):
                    self.fail(i, code, f"fused activation {a} (fedtiny: NONE, RELU, RELU6)")
                if a != "NONE":
                    toks.append(a.lower())
            cur = out
            shape = self.shape(out)[1:]
        if g.Outputs(0) != cur:
            raise ValueError(f"{self.name}: the model output is not the last operator's output")
        if not toks or not toks[-1].startswith("dense"):
            raise ValueError(f"{self.name}: the last layer must be FULLY_CONNECTED (the logits, then an optional "
                             f"SOFTMAX); it is {toks[-1] if toks else 'nothing'}")
        if len(ishape) == 2:
            inp = f"{ishape[1]}"
        elif ishape[1] == 1 and all(k == 1 for k in wins) and wins:
            inp = f"{ishape[2]}x{ishape[3]}"  # a 1-D signal
            toks = [_one_d(t) for t in toks]
        else:
            inp = f"{ishape[1]}x{ishape[2]}x{ishape[3]}"
        p = np.concatenate(params).astype(np.float32) if params else np.zeros(0, np.float32)
        return Imported("seq:" + ",".join([inp] + toks), p, softmax)


def _one_d(tok: str) -> str:
    """A height-1 window token in the 1-D grammar: conv8k1x5s2 -> conv8k5s2, pool -> maxpool2."""
    import re
    if tok == "pool":
        return "pool"  # on a 1-D input 'pool' is the 1x2 stride-2 max pool
    m = re.fullmatch(r"(conv\d+k|dwk|maxpool|avgpool)1x(\d+)(.*)", tok)
    return f"{m.group(1)}{m.group(2)}{m.group(3)}" if m else tok
