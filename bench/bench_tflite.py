"""Inference latency per image: the exported .tflite model (float32 and int8) in the TFLite
interpreter beside fedtiny's own Model.predict, in the same run, one image per call (what a
device does for each new sample) and in batches of 256.  Model file sizes go into extra_info.

    pytest bench/bench_tflite.py --benchmark-only --benchmark-json=tflite.json
    python bench/bench_tflite.py tflite.json        # the README table
"""
import json
import sys

import numpy as np
import pytest

pytest.importorskip("flatbuffers")
pytest.importorskip("tflite")

import fedtiny  # noqa: E402
from fedtiny import tflite as ft  # noqa: E402
from fedtiny.model import build  # noqa: E402

try:
    ft.interpreter_backend()
except ImportError as exc:
    pytest.skip(str(exc), allow_module_level=True)

from fedtiny import datasets  # noqa: E402

THREADS = 1  # as the numpy baselines in bench/conftest.py: one core


@pytest.fixture(scope="module", params=["cnn", "2nn"])
def setup(request, tmp_path_factory):
    spec = request.param
    model = build(spec)
    params = model.init(seed=0)
    try:
        data = datasets.load("fashion-mnist")
    except ValueError as exc:  # dataset-fashion-mnist not installed
        pytest.skip(str(exc))
    x_train, x = data.x_train, data.x_test
    d = tmp_path_factory.mktemp(spec)
    files = {"float32": d / "f32.tflite", "int8": d / "int8.tflite"}
    ft.export_tflite(model, params, files["float32"])
    ft.export_tflite(model, params, files["int8"], int8=True, calibration=x_train[:500])
    interps = {k: ft.Interpreter(p, num_threads=THREADS) for k, p in files.items()}
    sizes = {k: p.stat().st_size for k, p in files.items()}
    return {"spec": spec, "model": model, "params": params, "x": x[:256], "interps": interps, "sizes": sizes}


def _info(benchmark, s, impl, batch):
    benchmark.group = f"{s['spec']} batch={batch}"
    benchmark.extra_info.update({"spec": s["spec"], "impl": impl, "batch": batch, "simd": fedtiny.simd_info(),
                                 "backend": s["interps"]["float32"].backend,
                                 "file_bytes": s["sizes"].get(impl.split()[-1], 0),
                                 "param_bytes_f32": 4 * s["model"].n_params})


@pytest.mark.parametrize("batch", [1, 256])
def test_model_predict(benchmark, setup, batch):
    _info(benchmark, setup, "fedtiny Model.predict", batch)
    x = setup["x"][:batch]
    out = benchmark(setup["model"].predict, setup["params"], x)
    assert out.shape == (batch, 10)


@pytest.mark.parametrize("kind", ["float32", "int8"])
@pytest.mark.parametrize("batch", [1, 256])
def test_tflite_interpreter(benchmark, setup, kind, batch):
    _info(benchmark, setup, f"tflite {kind}", batch)
    interp = setup["interps"][kind]
    x = setup["x"][:batch]
    interp.run(x, batch_size=batch)  # resize once, outside the timing
    out = benchmark(interp.run, x, batch_size=batch)
    assert out.shape == (batch, 10) and np.isfinite(out).all()
    if kind == "float32":  # (int8 agreement is tested on a trained model in tests/test_tflite.py)
        np.testing.assert_array_equal(out.argmax(axis=1), setup["model"].predict(setup["params"], x).argmax(axis=1))


def main(path: str) -> None:
    rows = {}
    for b in json.load(open(path))["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault(info["spec"], {})[(info["impl"], info["batch"])] = (b["stats"]["median"], info)
    print("| model | runs in | file size | per image, batch 1 | per image, batch 256 |")
    print("|---|---|---:|---:|---:|")
    for spec, impls in rows.items():
        for impl in ("fedtiny Model.predict", "tflite float32", "tflite int8"):
            if (impl, 1) not in impls:
                continue
            t1, info = impls[(impl, 1)]
            t256 = impls.get((impl, 256), (float("nan"),))[0] / 256
            where = (f"fedtiny C engine ({info['simd']})" if impl.startswith("fedtiny")
                     else f"{info['backend']} {impl.split()[-1]}")
            size = (f"{info['param_bytes_f32']:,} B (float32 params)" if impl.startswith("fedtiny")
                    else f"{info['file_bytes']:,} B")
            print(f"| {spec} | {where} | {size} | {t1 * 1e6:,.1f} µs | {t256 * 1e6:,.1f} µs |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/bench_tflite.py BENCHMARK.json")
    main(sys.argv[1])
