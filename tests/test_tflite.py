"""TFLite export run in the real interpreter (LiteRT, or tflite-runtime) and checked against
Model.predict and a numpy float64 forward pass, on real Fashion-MNIST images."""
import sys
import types

import numpy as np
import pytest

pytest.importorskip("flatbuffers")
pytest.importorskip("tflite")
from fedtiny import tflite as ft  # noqa: E402
from fedtiny.tflite import writer as tx  # noqa: E402
from fedtiny.tflite import export as export_cmd  # noqa: E402

from fedtiny.model import build  # noqa: E402
from tflite_oracle import MLP, SMALL_CNN, fashion, forward, he_init, n_params, trained  # noqa: E402

try:
    ft.interpreter_backend()
except ImportError as exc:  # neither ai-edge-litert nor a usable tflite-runtime: says which to install
    pytest.skip(str(exc), allow_module_level=True)

CNN = [("conv2d", 32, 5, 5, 1), ("relu",), ("maxpool2d",), ("conv2d", 64, 5, 5, 32), ("relu",),
       ("maxpool2d",), ("flatten",), ("dense", 1024, 128), ("relu",), ("dense", 128, 10)]
TWO_NN = [("dense", 784, 200), ("relu",), ("dense", 200, 200), ("relu",), ("dense", 200, 10)]
REL_TOL = 1e-5  # exported float32 vs Model.predict / the float64 oracle, relative to the largest output


def spec(layers, input_shape):
    return types.SimpleNamespace(layers=layers, input_shape=input_shape)


def assert_close_rel(got, ref, tol=REL_TOL):
    err = np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err <= tol, f"max error {err:.2e} of the largest output, allowed {tol:.0e}"


def test_param_counts_and_layers_match_the_model_conventions():
    assert tx.n_params(CNN) == n_params(CNN) == build("cnn").n_params == 184_586
    assert tx.n_params(TWO_NN) == build("2nn").n_params == 199_210
    assert ft.model_layers(build("cnn")) == (CNN, (28, 28, 1))
    assert ft.model_layers(build("2nn")) == (TWO_NN, (784,))


def _real_inputs(input_shape, n=300):
    x, _ = fashion("test")
    if input_shape == (64,):
        x = x[:, 10:18, 10:18, :]  # the centre 8x8 of each image: real inputs for a 64-input mlp
    return x[:n]


@pytest.mark.parametrize("spec_", ["cnn", "2nn", "mlp:64-32-10"])
def test_float32_export_matches_model_predict(tmp_path, spec_):
    model = build(spec_)
    params = model.init(seed=1)
    x = _real_inputs(model.input_shape)
    path = tmp_path / "model.tflite"
    content = ft.export_tflite(model, params, path)
    assert path.read_bytes() == content and content[4:8] == b"TFL3"
    interp = ft.Interpreter(path)
    assert interp.backend in ("ai_edge_litert", "tflite_runtime")
    assert interp.input_shape == model.input_shape and interp.output_shapes == [(10,)]
    got = interp.run(x, batch_size=128)  # 300 = 128 + 128 + 44: the batch is resized
    assert got.dtype == np.float32 and got.shape == (300, 10)
    assert_close_rel(got, model.predict(params, x))
    assert_close_rel(got, forward(ft.model_layers(model)[0], model.input_shape, params, x))


@pytest.mark.parametrize("name,layers,input_shape", [
    ("small_cnn", SMALL_CNN, (28, 28, 1)),
    # a Dense fed a (H, W, C) activation without Flatten reads it in (h, w, c) order
    ("conv_dense_no_flatten", [("conv2d", 4, 3, 3, 1), ("maxpool2d",), ("relu",), ("dense", 13 * 13 * 4, 10)],
     (28, 28, 1)),
])
def test_float32_export_of_layer_lists_matches_numpy_oracle(name, layers, input_shape):
    params = he_init(layers, seed=1)
    x = _real_inputs(input_shape)
    got = ft.Interpreter(ft.export_tflite(spec(layers, input_shape), params)).run(x)
    assert_close_rel(got, forward(layers, input_shape, params, x))


def test_float32_export_with_softmax_gives_probabilities():
    params = he_init(MLP, seed=2)
    x, _ = fashion("test")
    x = x[:100]
    prob = ft.Interpreter(ft.export_tflite(spec(MLP, (784,)), params, softmax=True)).run(x)
    logits = forward(MLP, (784,), params, x)
    ref = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(prob, ref, rtol=1e-5, atol=1e-6)


def test_int8_export_with_softmax():
    """int8 SOFTMAX: output scale 1/256, zero point -128, as the TFLite spec fixes them."""
    model, params = trained("2nn")
    x_train, _ = fashion("train")
    x, _ = fashion("test")
    prob = ft.Interpreter(ft.export_tflite(model, params, softmax=True, int8=True,
                                           calibration=x_train[-500:])).run(x[:500])
    logits = model.predict(params, x[:500]).astype(np.float64)
    ref = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    assert np.all(np.abs(prob * 256 - np.rint(prob * 256)) < 1e-3)  # on the 1/256 grid
    assert np.abs(prob - ref).max() < 0.05 and np.abs(prob - ref).mean() < 0.005


@pytest.mark.parametrize("spec_,min_acc", [("2nn", 0.80), ("cnn", 0.80)])
def test_int8_export_agrees_with_float_on_fashion_mnist(tmp_path, spec_, min_acc):
    """int8: same argmax as float32 on >= 99% of the 10k test images, <= 0.5 points accuracy lost."""
    model, params = trained(spec_)
    x_train, _ = fashion("train")
    x, y = fashion("test")
    f32, i8 = tmp_path / "f32.tflite", tmp_path / "int8.tflite"
    ft.export_tflite(model, params, f32)
    ft.export_tflite(model, params, i8, int8=True, calibration=x_train[-500:])
    ref = model.predict(params, x).argmax(axis=1)
    float_pred = ft.Interpreter(f32).run(x, batch_size=500).argmax(axis=1)
    int8_pred = ft.Interpreter(i8).run(x, batch_size=500).argmax(axis=1)
    assert (float_pred == ref).mean() >= 0.999
    acc_f32, acc_i8 = (float_pred == y).mean(), (int8_pred == y).mean()
    agree = (int8_pred == float_pred).mean()
    assert acc_f32 > min_acc, f"the test model is undertrained ({acc_f32:.3f})"
    assert agree >= 0.99, f"int8 argmax agrees with float32 on {agree:.2%} of the test images"
    assert acc_f32 - acc_i8 <= 0.005, f"int8 accuracy {acc_i8:.4f} vs float32 {acc_f32:.4f}"
    assert i8.stat().st_size < 0.3 * f32.stat().st_size


def test_int8_model_is_full_integer():
    """Weights and activations int8 (conv per channel), biases int32, float32 only at the edges."""
    import tflite
    model, params = trained("cnn")
    x, _ = fashion("train")
    content = ft.export_tflite(model, params, int8=True, calibration=x[:200])
    g = tflite.Model.GetRootAsModel(content, 0).Subgraphs(0)
    tensors = {g.Tensors(i).Name().decode(): g.Tensors(i) for i in range(g.TensorsLength())}
    float_tensors = sorted(n for n, t in tensors.items() if t.Type() == tflite.TensorType.FLOAT32)
    assert float_tensors == ["input_float32", "layer9_dense_float32"]
    assert tensors["layer0_conv2d_weight"].Type() == tflite.TensorType.INT8
    assert tensors["layer0_conv2d_bias"].Type() == tflite.TensorType.INT32
    assert tensors["layer0_conv2d_relu"].Type() == tflite.TensorType.INT8
    assert tensors["layer7_dense_weight"].Type() == tflite.TensorType.INT8
    q = tensors["layer3_conv2d_weight"].Quantization()
    assert q.ScaleLength() == 64 and q.QuantizedDimension() == 0  # one scale per output channel
    assert not q.ZeroPointAsNumpy().any()
    assert tensors["layer7_dense_weight"].Quantization().ScaleLength() == 1


def test_extract_features_from_backbone_matches_truncated_oracle(tmp_path):
    model = build("cnn")
    params = model.init(seed=4)
    x, _ = fashion("test")
    x = x[:64]
    path = tmp_path / "feat.tflite"
    ft.export_tflite(model, params, path, drop_dense=1)
    feats, head = ft.prepare_backbone(path, x)
    assert feats.shape == (64, 128) and head == "mlp:128-10"
    assert_close_rel(feats, forward(CNN, (28, 28, 1), params, x, upto=9))  # after Dense 128 + ReLU
    assert ft.head_spec(128, (32,), 5) == "mlp:128-32-5"


@pytest.mark.parametrize("int8", [False, True])
def test_transfer_learning_trains_a_head_on_backbone_features(tmp_path, int8):
    """TinyFedTL: a frozen .tflite backbone, a fresh dense head trained with fedtiny's local SGD."""
    from fedtiny.train import evaluate, local_sgd
    model, params = trained("cnn")  # its backbone saw x[:20000] only
    x, y = fashion("train")
    x_test, y_test = fashion("test")
    path = tmp_path / "backbone.tflite"
    ft.export_tflite(model, params, path, drop_dense=1, int8=int8, calibration=x[-500:] if int8 else None)
    device_x, device_y = x[20000:24000], y[20000:24000]  # one device's data, new to the backbone
    feats, head = ft.prepare_backbone(path, device_x)
    head_model = build(head)
    head_params = head_model.init(seed=0)
    test_feats = ft.extract_features(path, x_test[:3000])
    _, acc_before = evaluate(head_model, head_params, test_feats, y_test[:3000])
    local_sgd(head_model, head_params, feats, device_y, epochs=2, batch_size=32, lr=0.02, momentum=0.9)
    _, acc = evaluate(head_model, head_params, test_feats, y_test[:3000])
    assert head_model.n_params == 1290  # what is federated: the head only
    assert acc >= 0.70 and acc - acc_before >= 0.3, (acc_before, acc)  # chance is 0.10


def test_federated_head_on_a_frozen_backbone_in_simulate(tmp_path):
    """`fedtiny simulate --backbone`: FedAvg over 10 clients trains only the head on features."""
    simulate = pytest.importorskip("fedtiny.simulate")
    from fedtiny import datasets
    model, params = trained("cnn")  # its backbone saw x[:20000] only
    x, y = fashion("train")
    x_test, y_test = fashion("test")
    path = tmp_path / "backbone.tflite"
    ft.export_tflite(model, params, path, drop_dense=1)
    data = datasets.Dataset("fashion-mnist", x[30000:36000], y[30000:36000], x_test[:2000], y_test[:2000], 10)
    feats, head = ft.backbone_dataset(path, data)
    assert head == "mlp:128-10" and feats.input_shape == (128,) and feats.x_test.shape == (2000, 128)
    assert_close_rel(feats.x_test[:50], forward(CNN, (28, 28, 1), params, x_test[:50], upto=9))
    cfg = simulate.SimConfig(model=head, clients=10, fraction=0.5, rounds=5, epochs=1, batch=20, lr=0.05, seed=0)
    result = simulate.run(cfg, data=feats)
    assert result.summary["n_params"] == 1290
    acc = result.summary["final_test_acc"]
    print(f"federated head: test accuracy {acc:.4f} after 5 rounds")
    assert abs(acc - 0.854) <= 0.01, acc  # the figure of README and docs/tflite.md, 85.4% (chance 0.10)
    assert data.x_train.shape[1:] == (28, 28, 1)  # the caller's dataset is left as it was


def test_backbone_of_mlp_keeps_the_first_dense_layers():
    assert ft.backbone_layers(TWO_NN, 1) == TWO_NN[:4]
    assert ft.backbone_layers(TWO_NN, 2) == TWO_NN[:2]
    with pytest.raises(ValueError, match="nothing would remain"):
        ft.backbone_layers(TWO_NN, 3)
    with pytest.raises(ValueError, match="has 1"):
        ft.backbone_layers(CNN[:7] + [("dense", 1024, 10)], 2)


# ------------------------------------------------------------------------ bad input

def test_malformed_model_files_give_a_clear_error(tmp_path):
    good = ft.export_tflite(spec(MLP, (784,)), he_init(MLP, seed=5))
    with pytest.raises(ValueError, match="no such file|cannot read"):
        ft.Interpreter(tmp_path / "missing.tflite")
    (tmp_path / "text.tflite").write_text("hello, not a model")
    with pytest.raises(ValueError, match="not a TFLite model"):
        ft.Interpreter(tmp_path / "text.tflite")
    with pytest.raises(ValueError, match="not a TFLite model"):
        ft.Interpreter(b"")
    for cut in (len(good) // 2, len(good) - 1000, len(good) - 3):
        with pytest.raises(ValueError, match="malformed TFLite model: (truncated|buffer 1 extends past the end)"):
            ft.Interpreter(good[:cut])
    import tflite
    g = tflite.Model.GetRootAsModel(good, 0).Subgraphs(0)
    bad = bytearray(good)  # operator 0 reads tensor 99 of 7
    bad[g.Operators(0)._tab.Vector(g.Operators(0)._tab.Offset(6))] = 99
    with pytest.raises(ValueError, match="operator 0 uses tensor 99"):
        ft.Interpreter(bytes(bad))
    if ft.interpreter_backend() != "ai_edge_litert":
        return  # tflite-runtime 2.14 does not verify flatbuffers: the fuzz below can crash it
    rng = np.random.default_rng(0)
    for _ in range(50):  # corrupted bytes: rejected or run, never a crash
        bad = bytearray(good)
        for at in rng.integers(8, len(bad), 4):
            bad[at] = int(rng.integers(0, 256))
        try:
            ft.Interpreter(bytes(bad)).run(np.zeros((2, 784), np.float32))
        except ValueError:
            pass


def test_unsupported_or_inconsistent_models_are_rejected():
    p = he_init(MLP, seed=6)
    with pytest.raises(ValueError, match="unsupported layer 'lstm'"):
        ft.export_tflite(spec([("lstm", 4)], (784,)), p)
    with pytest.raises(ValueError, match="has 101769 values but the model needs 101770"):
        ft.export_tflite(spec(MLP, (784,)), p[:-1])
    with pytest.raises(ValueError, match="1-D float32"):
        ft.export_tflite(spec(MLP, (784,)), p.astype(np.float64))
    bad = p.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ft.export_tflite(spec(MLP, (784,)), bad)
    with pytest.raises(ValueError, match=r"input has shape \(100,\), 100 values, not 784"):
        ft.export_tflite(spec(MLP, (100,)), p)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ft.export_tflite(spec([("conv2d", 2, 5, 5, 1)], (4, 4, 1)), he_init([("conv2d", 2, 5, 5, 1)], 0))
    with pytest.raises(ValueError, match="needs calibration data"):
        ft.export_tflite(spec(MLP, (784,)), p, int8=True)
    with pytest.raises(ValueError, match="calibration data of shape"):
        ft.export_tflite(spec(MLP, (784,)), p, int8=True, calibration=np.zeros((5, 100), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        ft.export_tflite(spec(MLP, (784,)), p, int8=True, calibration=np.full((5, 784), np.inf, np.float32))


def test_run_rejects_inputs_of_the_wrong_size():
    interp = ft.Interpreter(ft.export_tflite(spec(MLP, (784,)), he_init(MLP, seed=7)))
    with pytest.raises(ValueError, match=r"does not hold N samples of \(784,\)"):
        interp.run(np.zeros((3, 28, 27), np.float32))
    assert interp.run(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)


def test_missing_interpreter_names_the_package_to_install(monkeypatch):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match="pip install 'fedtiny\\[tflite\\]'"):
        ft.Interpreter(b"\0\0\0\0TFL3")
    with pytest.raises(ImportError, match="ai-edge-litert"):
        ft.interpreter_backend()
    monkeypatch.setitem(sys.modules, "flatbuffers", None)
    with pytest.raises(ImportError, match=r"TFLite export needs .* pip install 'fedtiny\[tflite\]'"):
        ft.export_tflite(spec(MLP, (784,)), he_init(MLP, seed=0))


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("FEDTINY_TFLITE_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="expected ai_edge_litert or tflite_runtime"):
        ft.interpreter_backend()
    monkeypatch.setenv("FEDTINY_TFLITE_BACKEND", "tflite_runtime")
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="no TFLite interpreter is installed"):
            ft.interpreter_backend()
        return
    if int(np.__version__.split(".")[0]) >= 2:
        # tflite-runtime 2.14 fails inside the interpreter ("_ARRAY_API not found"): said up front
        with pytest.raises(ImportError, match="does not work with numpy 2"):
            ft.interpreter_backend()
    else:
        model = build("mlp:64-32-10")
        params = model.init(seed=0)
        x = _real_inputs((64,))
        interp = ft.Interpreter(ft.export_tflite(model, params))
        assert interp.backend == "tflite_runtime"
        assert_close_rel(interp.run(x), model.predict(params, x))


def _save_state(directory, params):
    """A checkpoint as fedtiny aggregate writes it after round 3."""
    from fedtiny.net import state
    state.save(str(directory), state.Checkpoint(3, params, {}, [], {}))


def test_load_params(tmp_path):
    p = he_init(MLP, seed=8)
    np.save(tmp_path / "p.npy", p)
    (tmp_path / "state").mkdir()
    with pytest.raises(ValueError, match="no finished round"):
        ft.load_params(state=str(tmp_path / "state"))
    _save_state(tmp_path / "state", p)
    np.testing.assert_array_equal(ft.load_params(str(tmp_path / "p.npy")), p)
    np.testing.assert_array_equal(ft.load_params(state=str(tmp_path / "state")), p)
    np.save(tmp_path / "d.npy", p.astype(np.float64))
    with pytest.raises(ValueError, match="expected a 1-D float32 parameter vector, got float64"):
        ft.load_params(str(tmp_path / "d.npy"))
    with pytest.raises(ValueError, match="no such file"):
        ft.load_params(str(tmp_path / "nope.npy"))
    with pytest.raises(ValueError, match="not a directory"):
        ft.load_params(state=str(tmp_path / "nope"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a .npy"):
        ft.load_params(str(tmp_path / "junk.npy"))


# ------------------------------------------------------------------------ CLI

def test_cli_export_float32_and_int8(tmp_path, capsys):
    model, params = trained("2nn")
    np.save(tmp_path / "p.npy", params)
    x, y = fashion("test")
    out = tmp_path / "m.tflite"
    assert export_cmd.main_export(["--model", "2nn", "--params", str(tmp_path / "p.npy"), "--tflite", str(out)]) == 0
    assert "float32" in capsys.readouterr().out
    assert_close_rel(ft.Interpreter(out).run(x[:200]), model.predict(params, x[:200]))

    _save_state(tmp_path / "state", params)
    x_train, _ = fashion("train")
    raw = (x_train[:300, :, :, 0] * 255).round().astype(np.uint8)  # a device's raw image bytes
    np.savez(tmp_path / "calib.npz", x=raw, y=np.zeros(300, np.int64))
    out8 = tmp_path / "m8.tflite"
    assert export_cmd.main_export(["--model", "2nn", "--state", str(tmp_path / "state"), "--tflite", str(out8),
                           "--int8", "--calibration-data", str(tmp_path / "calib.npz"),
                           "--calibration-size", "200"]) == 0
    assert "int8" in capsys.readouterr().out
    pred = ft.Interpreter(out8).run(x).argmax(axis=1)
    assert (pred == model.predict(params, x).argmax(axis=1)).mean() >= 0.99


@pytest.mark.parametrize("args,message", [
    (["--model", "rnn"], "unknown model spec 'rnn'"),
    (["--model", "cnn"], "has 199210 values, model 'cnn' has 184586 parameters"),
    (["--model", "2nn", "--int8"], "--int8 needs --calibration-data FILE"),
    (["--model", "2nn", "--calibration-data", "c.npy"], "--calibration-data is only used with --int8"),
    (["--model", "2nn", "--int8", "--calibration-data", "nope.npy"], "nope.npy: no such file"),
    (["--model", "2nn", "--drop-dense", "5"], "cannot drop 5 dense layers"),
    (["--model", "2nn", "--tflite", "no/such/dir/m.tflite"], "no/such/dir/m.tflite: cannot write the model"),
])
def test_cli_export_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "p.npy", np.zeros(199_210, np.float32))
    rc = export_cmd.main_export(args + ["--params", "p.npy"] + ([] if "--tflite" in args else ["--tflite", "out.tflite"]))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err and err.startswith("fedtiny export: error:")
    assert not (tmp_path / "out.tflite").exists()


def test_cli_export_runs_as_a_process(tmp_path):
    import subprocess
    np.save(tmp_path / "p.npy", build("mlp:64-32-10").init(seed=0))
    code = "import sys; from fedtiny.tflite.export import main_export; sys.exit(main_export(sys.argv[1:]))"
    ok = subprocess.run([sys.executable, "-c", code, "--model", "mlp:64-32-10", "--params", "p.npy",
                         "--tflite", "m.tflite"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and (tmp_path / "m.tflite").stat().st_size > 2410 * 4, ok.stderr
    bad = subprocess.run([sys.executable, "-c", code, "--model", "2nn", "--params", "p.npy",
                          "--tflite", "m2.tflite"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("fedtiny export: error: params has 2410 values, model '2nn' "
                                  "has 199210 parameters")


def test_export_as_a_fedtiny_cli_subcommand(tmp_path, monkeypatch, capsys):
    """The contract of fedtiny.cli: SUBCOMMANDS["export"] = "fedtiny.tflite.export"."""
    cli = pytest.importorskip("fedtiny.cli")
    monkeypatch.setitem(cli.SUBCOMMANDS, "export", "fedtiny.tflite.export")
    model = build("mlp:64-32-10")
    params = model.init(seed=0)
    np.save(tmp_path / "p.npy", params)
    out = tmp_path / "m.tflite"
    assert cli.main(["export", "--model", "mlp:64-32-10", "--params", str(tmp_path / "p.npy"),
                     "--tflite", str(out)]) == 0
    x = _real_inputs((64,))
    assert_close_rel(ft.Interpreter(out).run(x), model.predict(params, x))
    capsys.readouterr()
    assert cli.main(["export", "--model", "2nn", "--params", str(tmp_path / "p.npy"), "--tflite", str(out)]) == 2
    assert capsys.readouterr().err == ("fedtiny export: error: params has 2410 values, model '2nn' "
                                       "has 199210 parameters\n")


def test_simulate_cli_with_backbone_federates_only_the_head(tmp_path, capsys):
    """`fedtiny simulate --backbone`: the CLI swaps --model for the head on the backbone's features."""
    from fedtiny import cli, datasets, model as model_mod, train

    data = datasets.load("digits", None, seed=0)
    m = model_mod.build("mlp:64-32-10")
    params = m.init(seed=0)
    train.local_sgd(m, params, data.x_train, data.y_train, epochs=3, batch_size=20, lr=0.1)
    path = tmp_path / "feat.tflite"
    ft.export_tflite(m, params, path, drop_dense=1)  # 64 -> 32 features
    rc = cli.main(["simulate", "--dataset", "digits", "--backbone", str(path), "--clients", "5",
                   "--fraction", "1", "--rounds", "5", "--lr", "0.1", "--batch", "20", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "federating the head mlp:32-10" in out
    acc = float(out.split("final test accuracy ")[1].split()[0])
    assert acc >= 0.75  # chance is 0.1; measured 0.79 after 3 rounds, more after 5


def test_client_cli_backbone_head_mismatch_is_one_line(tmp_path, capsys):
    from fedtiny import cli, model as model_mod
    from fedtiny.net import keys

    m = model_mod.build("mlp:64-32-10")
    path = tmp_path / "feat.tflite"
    ft.export_tflite(m, m.init(seed=1), path, drop_dense=1)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    keys.write_keys(str(tmp_path / "keys"), "1 " + "ab" * 16 + "\n")
    rc = cli.main(["client", "--server", "127.0.0.1:9", "--device-id", "1", "--key", str(tmp_path / "keys"),
                   "--data", str(tmp_path / "d.npz"), "--backbone", str(path), "--model", "mlp:64-10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "gives 32 features" in err[0] and "use --model mlp:32-10" in err[0]
