"""`--model FILE.tflite`: a float .tflite built OUTSIDE fedtiny's writer (here, operator by operator
with the `tflite` schema builders and `flatbuffers`, in this file) is imported, federated with
FedAvg, exported back, and run by the real LiteRT interpreter, which must agree with fedtiny.

The hand-built file differs from what fedtiny's writer emits on purpose: MEAN keeps its dims and
is followed by a RESHAPE, the last FULLY_CONNECTED has no bias (input index -1), activations are
separate RELU6 operators as well as fused ones, the operator codes are listed in another order,
and the model ends in SOFTMAX."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flatbuffers")
tfl = pytest.importorskip("tflite")
import flatbuffers  # noqa: E402

from fedtiny import datasets, simulate  # noqa: E402
from fedtiny import model as fm  # noqa: E402
from fedtiny import tflite as ft  # noqa: E402
from fedtiny import train as ftr  # noqa: E402

ACT = tfl.ActivationFunctionType


class _Builder:
    """A minimal float32 TFLite model builder on the schema's generated code."""

    def __init__(self):
        self.tensors, self.ops, self.codes = [], [], []

    def tensor(self, shape, data=None, dtype=np.float32):
        self.tensors.append((tuple(shape), None if data is None else np.asarray(data, dtype)))
        return len(self.tensors) - 1

    def op(self, code, ins, outs, opt=None):
        if code not in self.codes:
            self.codes.append(code)
        self.ops.append((code, ins, outs, opt))

    def build(self, inp, out):
        b = flatbuffers.Builder(4096)
        bufs = [None] + [t[1] for t in self.tensors if t[1] is not None]
        buf_offs = []
        for data in bufs:
            vec = b.CreateByteVector(data.astype(data.dtype.newbyteorder("<")).tobytes()) if data is not None else None
            tfl.BufferStart(b)
            if vec is not None:
                tfl.BufferAddData(b, vec)
            buf_offs.append(tfl.BufferEnd(b))
        t_offs, nbuf = [], 1
        for i, (shape, data) in enumerate(self.tensors):
            name = b.CreateString(f"t{i}")
            tfl.TensorStartShapeVector(b, len(shape))
            for d in reversed(shape):
                b.PrependInt32(d)
            sv = b.EndVector()
            tfl.TensorStart(b)
            tfl.TensorAddShape(b, sv)
            tfl.TensorAddType(b, tfl.TensorType.INT32 if data is not None and data.dtype == np.int32
                              else tfl.TensorType.FLOAT32)
            tfl.TensorAddName(b, name)
            if data is not None:
                tfl.TensorAddBuffer(b, nbuf)
                nbuf += 1
            t_offs.append(tfl.TensorEnd(b))
        o_offs = []
        for code, ins, outs, opt in self.ops:
            opt_off = opt(b) if opt else None
            vi = self._ints(b, tfl.OperatorStartInputsVector, ins)
            vo = self._ints(b, tfl.OperatorStartOutputsVector, outs)
            tfl.OperatorStart(b)
            tfl.OperatorAddOpcodeIndex(b, self.codes.index(code))
            tfl.OperatorAddInputs(b, vi)
            tfl.OperatorAddOutputs(b, vo)
            if opt_off:
                tfl.OperatorAddBuiltinOptionsType(b, opt_off[0])
                tfl.OperatorAddBuiltinOptions(b, opt_off[1])
            o_offs.append(tfl.OperatorEnd(b))
        st = self._offs(b, tfl.SubGraphStartTensorsVector, t_offs)
        so = self._offs(b, tfl.SubGraphStartOperatorsVector, o_offs)
        si = self._ints(b, tfl.SubGraphStartInputsVector, [inp])
        sout = self._ints(b, tfl.SubGraphStartOutputsVector, [out])
        tfl.SubGraphStart(b)
        tfl.SubGraphAddTensors(b, st)
        tfl.SubGraphAddOperators(b, so)
        tfl.SubGraphAddInputs(b, si)
        tfl.SubGraphAddOutputs(b, sout)
        sg = tfl.SubGraphEnd(b)
        c_offs = []
        for code in self.codes:
            v = getattr(tfl.BuiltinOperator, code)
            tfl.OperatorCodeStart(b)
            tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(v, 127))
            tfl.OperatorCodeAddBuiltinCode(b, v)
            tfl.OperatorCodeAddVersion(b, 1)
            c_offs.append(tfl.OperatorCodeEnd(b))
        mc = self._offs(b, tfl.ModelStartOperatorCodesVector, c_offs)
        ms = self._offs(b, tfl.ModelStartSubgraphsVector, [sg])
        mb = self._offs(b, tfl.ModelStartBuffersVector, buf_offs)
        tfl.ModelStart(b)
        tfl.ModelAddVersion(b, 3)
        tfl.ModelAddOperatorCodes(b, mc)
        tfl.ModelAddSubgraphs(b, ms)
        tfl.ModelAddBuffers(b, mb)
        b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _ints(b, start, vals):
        start(b, len(vals))
        for v in reversed(vals):
            b.PrependInt32(v)
        return b.EndVector()

    @staticmethod
    def _offs(b, start, offs):
        start(b, len(offs))
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()


def _conv_opt(stride, same, act, dw=False):
    def f(b):
        pre = "DepthwiseConv2DOptions" if dw else "Conv2DOptions"
        getattr(tfl, pre + "Start")(b)
        getattr(tfl, pre + "AddPadding")(b, tfl.Padding.SAME if same else tfl.Padding.VALID)
        getattr(tfl, pre + "AddStrideH")(b, stride)
        getattr(tfl, pre + "AddStrideW")(b, stride)
        if dw:
            tfl.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
        getattr(tfl, pre + "AddFusedActivationFunction")(b, act)
        return getattr(tfl.BuiltinOptions, pre), getattr(tfl, pre + "End")(b)
    return f


def _opt(kind, **kw):
    def f(b):
        if kind == "mean":
            tfl.ReducerOptionsStart(b)
            tfl.ReducerOptionsAddKeepDims(b, True)
            return tfl.BuiltinOptions.ReducerOptions, tfl.ReducerOptionsEnd(b)
        if kind == "fc":
            tfl.FullyConnectedOptionsStart(b)
            tfl.FullyConnectedOptionsAddFusedActivationFunction(b, kw.get("act", ACT.NONE))
            return tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsEnd(b)
        if kind == "softmax":
            tfl.SoftmaxOptionsStart(b)
            tfl.SoftmaxOptionsAddBeta(b, 1.0)
            return tfl.BuiltinOptions.SoftmaxOptions, tfl.SoftmaxOptionsEnd(b)
        if kind == "pool":
            tfl.Pool2DOptionsStart(b)
            tfl.Pool2DOptionsAddPadding(b, tfl.Padding.VALID)
            tfl.Pool2DOptionsAddStrideH(b, kw["s"])
            tfl.Pool2DOptionsAddStrideW(b, kw["s"])
            tfl.Pool2DOptionsAddFilterHeight(b, kw["k"])
            tfl.Pool2DOptionsAddFilterWidth(b, kw["k"])
            return tfl.BuiltinOptions.Pool2DOptions, tfl.Pool2DOptionsEnd(b)
        tfl.ReshapeOptionsStart(b)
        return tfl.BuiltinOptions.ReshapeOptions, tfl.ReshapeOptionsEnd(b)
    return f


def mobilenet_like(seed=0, extra_op=None):
    """A depthwise-separable net on 12x12x3 images, 4 classes; weights drawn from `seed`.
    Returns the file's bytes and its weights in fedtiny's interchange layout (the oracle)."""
    rng = np.random.default_rng(seed)
    B = _Builder()
    x = B.tensor((1, 12, 12, 3))
    w1, b1 = rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8)           # conv 3x3 s2 SAME, RELU6 fused
    dw, bd = rng.normal(0, 0.3, (1, 3, 3, 8)), rng.normal(0, 0.1, 8)           # depthwise 3x3 SAME
    w2, b2 = rng.normal(0, 0.3, (16, 1, 1, 8)), rng.normal(0, 0.1, 16)         # pointwise 1x1
    wf = rng.normal(0, 0.3, (4, 16))                                           # dense, no bias
    t1 = B.tensor((1, 6, 6, 8))
    B.op("CONV_2D", [x, B.tensor(w1.shape, w1), B.tensor(b1.shape, b1)], [t1], _conv_opt(2, True, ACT.RELU6))
    t2 = B.tensor((1, 6, 6, 8))
    B.op("DEPTHWISE_CONV_2D", [t1, B.tensor(dw.shape, dw), B.tensor(bd.shape, bd)], [t2],
         _conv_opt(1, True, ACT.NONE, dw=True))
    t3 = B.tensor((1, 6, 6, 8))
    B.op("RELU6", [t2], [t3])
    t4 = B.tensor((1, 6, 6, 16))
    B.op("CONV_2D", [t3, B.tensor(w2.shape, w2), B.tensor(b2.shape, b2)], [t4], _conv_opt(1, False, ACT.RELU))
    t5 = B.tensor((1, 3, 3, 16))
    B.op("AVERAGE_POOL_2D", [t4], [t5], _opt("pool", k=2, s=2))
    cur = t5
    if extra_op:
        t = B.tensor((1, 3, 3, 16))
        B.op(extra_op, [cur], [t])
        cur = t
    t6 = B.tensor((1, 1, 1, 16))
    B.op("MEAN", [cur, B.tensor((2,), [1, 2], np.int32)], [t6], _opt("mean"))
    t7 = B.tensor((1, 16))
    B.op("RESHAPE", [t6, B.tensor((2,), [-1, 16], np.int32)], [t7], _opt("reshape"))
    t8 = B.tensor((1, 4))
    B.op("FULLY_CONNECTED", [t7, B.tensor(wf.shape, wf), -1], [t8], _opt("fc"))
    t9 = B.tensor((1, 4))
    B.op("SOFTMAX", [t8], [t9], _opt("softmax"))
    oracle = np.concatenate([w1.ravel(), b1, dw[0].transpose(2, 0, 1).ravel(), bd, w2.ravel(), b2, wf.ravel(),
                             np.zeros(4)]).astype(np.float32)
    return B.build(x, t9), oracle


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_import_reads_a_hand_built_model(tmp_path):
    content, oracle = mobilenet_like(1)
    path = tmp_path / "net.tflite"
    path.write_bytes(content)
    m = fm.build(str(path))
    assert m.imported.spec == "seq:12x12x3,conv8k3s2same,relu6,dwk3same,relu6,conv16k1,relu,avgpool2,gap,dense4"
    assert m.imported.softmax
    p = m.init(123)  # the file's weights, whatever the seed
    np.testing.assert_array_equal(p, oracle)
    x = np.random.default_rng(2).random((40, 12, 12, 3)).astype(np.float32)
    lite = ft.Interpreter(content).run(x)  # the original file on LiteRT
    np.testing.assert_allclose(_softmax(m.predict(p, x).astype(np.float64)), lite, rtol=1e-4, atol=1e-6)


def _blobs(n, seed):
    """4 classes of 12x12x3 images: each class a colour gradient in its own direction, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    u = np.linspace(-1, 1, 12)
    grads = [u[:, None] + 0 * u, 0 * u[:, None] + u, u[:, None] + u, u[:, None] - u]
    x = np.stack([np.stack([grads[c] * (k + 1) / 3 for k in range(3)], -1) for c in y])
    return (x + rng.normal(0, 0.3, x.shape)).astype(np.float32), y


def test_import_federate_export_round_trip_on_litert(tmp_path):
    """Import the hand-built file, run FedAvg over 8 clients with it as --model, export the result
    with `fedtiny export --model FILE.tflite`, and run the export on LiteRT: same outputs as
    fedtiny's own forward pass of the federated weights, and the federation learned."""
    content, _ = mobilenet_like(3)
    src = tmp_path / "net.tflite"
    src.write_bytes(content)
    x, y = _blobs(1600, 0)
    xt, yt = _blobs(400, 1)
    data = datasets.Dataset("blobs", x, y, xt, yt, 4)
    cfg = simulate.SimConfig(model=str(src), clients=8, fraction=0.5, rounds=8, epochs=2, batch=16, lr=0.1, seed=0)
    result = simulate.run(cfg, data=data)
    m = fm.build(str(src))
    _, acc0 = ftr.evaluate(m, m.init(0), xt, yt)
    acc = result.summary["final_test_acc"]
    print(f"hand-built depthwise net: test accuracy {acc0:.3f} as imported -> {acc:.3f} after 8 FedAvg rounds")
    assert acc >= max(0.6, acc0 + 0.2), (acc0, acc)
    params = result.params
    pfile = tmp_path / "p.npy"
    np.save(pfile, params)
    out = tmp_path / "back.tflite"
    r = subprocess.run([sys.executable, "-m", "fedtiny.cli", "export", "--params", str(pfile), "--model", str(src),
                        "--tflite", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lite = ft.Interpreter(out).run(xt[:100])
    np.testing.assert_allclose(lite, _softmax(m.predict(params, xt[:100]).astype(np.float64)), rtol=1e-4, atol=1e-6)
    assert lite.sum(1) == pytest.approx(1.0, abs=1e-5)  # the SOFTMAX came back
    # and the exported file imports as the same architecture with the federated weights
    back = fm.build(str(out))
    assert back.arch_hash() == m.arch_hash()
    np.testing.assert_array_equal(back.init(0), params)


@pytest.mark.parametrize("op", ["TANH", "LOGISTIC"])
def test_unsupported_operator_is_named(tmp_path, op):
    content, _ = mobilenet_like(0, extra_op=op)
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"operator 5 \({op}\): unsupported operator; fedtiny imports CONV_2D"):
        fm.build(str(path))
    r = subprocess.run([sys.executable, "-m", "fedtiny.cli", "export", "--params", str(path), "--model", str(path),
                        "--tflite", str(tmp_path / "o.tflite")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"({op}): unsupported operator" in r.stderr, r.stderr


def test_int8_and_garbage_files_are_refused(tmp_path):
    m = fm.build("seq:8x8x1,conv4k3,relu,gap,dense3")
    p = m.init(0)
    x = np.random.default_rng(0).random((50, 8, 8, 1)).astype(np.float32)
    q = tmp_path / "q.tflite"
    q.write_bytes(ft.export_tflite(m, p, int8=True, calibration=x))
    with pytest.raises(ValueError, match="QUANTIZE"):
        fm.build(str(q))
    g = tmp_path / "g.tflite"
    g.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        fm.build(str(g))
    with pytest.raises(ValueError, match="cannot read model file"):
        fm.build(str(tmp_path / "missing.tflite"))
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(ft.export_tflite(m, p)[:200])
    with pytest.raises(ValueError, match="malformed TFLite|no constant data|not a chain"):
        fm.build(str(cut))


@pytest.mark.parametrize("spec", [
    "seq:28x28x1,conv8k3s2same,relu6,dwk3same,relu6,conv16k1,relu,avgpool2,gap,dense10",
    "seq:128x3,conv16k5s2same,relu,pool,conv16k3,relu,gap,dense6",
    "seq:13x12x3,conv4k3s2,relu,dwk3s2same,relu6,dwk2x3,gap,dense4",
    "seq:10x9x2,avgpool3s2,conv3k3same,relu,maxpool2x3s1,flatten,dense4",
])
def test_export_of_every_new_layer_runs_on_litert(spec):
    """fedtiny's writer: float32 export equals fedtiny's forward pass on LiteRT (SAME padding split as
    TensorFlow splits it); the full-integer int8 export stays within a few percent of it; and the
    file imports back as the same architecture with the same weights."""
    m = fm.build(spec)
    rng = np.random.default_rng(5)
    p = m.init(1) + rng.normal(0, 0.05, m.n_params).astype(np.float32)
    x = rng.random((64,) + m.input_shape).astype(np.float32)
    xl = x.reshape((64,) + m.layers[0].in_shape)  # a 1-D model's .tflite input is (batch, 1, L, C)
    want = m.predict(p, x)
    f32 = ft.export_tflite(m, p)
    np.testing.assert_allclose(ft.Interpreter(f32).run(xl), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    q = ft.Interpreter(ft.export_tflite(m, p, int8=True, calibration=x)).run(xl)
    assert np.abs(q - want).max() <= 0.05 * np.abs(want).max()
    from fedtiny.tflite.reader import read_tflite_bytes
    imp = read_tflite_bytes(f32)
    assert fm.build(imp.spec).arch_hash() == m.arch_hash() and np.array_equal(imp.params, p)


def test_aggregator_and_client_processes_federate_a_tflite_model(tmp_path, monkeypatch):
    """`fedtiny aggregate --model FILE.tflite` and three `fedtiny client --model FILE.tflite` processes
    over UDP on 127.0.0.1 end bit for bit where `simulate` with the same file ends (the OFFER's
    architecture hash is the file's spec's, so the clients are accepted)."""
    import netutil
    from fedtiny.net import state
    m = fm.build("seq:8x8x1,conv6k3same,relu,dwk3s2same,relu6,conv8k1,relu,gap,dense10")
    path = tmp_path / "digits_ds.tflite"
    path.write_bytes(ft.export_tflite(m, m.init(7), softmax=True))
    monkeypatch.setattr(netutil, "MODEL", str(path))
    weights, rows = netutil.simulate_oracle(3, 2)
    fleet = netutil.Fleet(tmp_path, 3)
    procs = []
    try:
        with netutil.AggregatorThread(fleet.config(rounds=2, model=str(path))) as agg:
            procs = fleet.start_clients(agg.server)
            agg.wait(60)
        for p in procs:
            assert p.wait(timeout=20) == 0, netutil.client_logs(procs)
    finally:
        netutil.stop_all(procs)
    ck = state.load(fleet.config().state)
    assert ck.round == 2
    np.testing.assert_array_equal(ck.weights, weights)
    assert [r["test_acc"] for r in ck.metrics] == [r["test_acc"] for r in rows]
