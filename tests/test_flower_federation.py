"""A real Flower federation on 127.0.0.1 (flower-superlink, flower-supernode, `flwr run` on the
deployment engine): 2 fedtiny ClientApps, 1 fedtiny fleet node with 3 `fedtiny client` processes
behind it, 1 ordinary Flower numpy client. 3 rounds; the global model after each round must equal
a float64 FedAvg, computed here with numpy, of what each node sent (captured as received)."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

from fedtiny import model as model_mod  # noqa: E402
from fedtiny.net import keys  # noqa: E402
from fedtiny.net.demo import client_command, write_client_data  # noqa: E402

from flowerutil import Federation, free_tcp_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "flower_app")
MODEL = "mlp:64-32-10"
ROUNDS = 3
CLIP = 0.6     # the strategy's clip norm for one device's update: below honest first-round norms (~0.85)
QK = 128


def decode_int8_oracle(data: bytes) -> np.ndarray:
    """The Int8Update bytes in float64, straight from docs/PROTOCOL.md (header, {f32 d, i8 q[128]})."""
    assert data[:4] == b"FTQ8"
    n = int(np.frombuffer(data, "<u4", 1, 8)[0])
    nb = (n + QK - 1) // QK
    blocks = np.frombuffer(data, np.dtype([("d", "<f4"), ("q", "i1", (QK,))]), nb, 16)
    return (blocks["d"].astype(np.float64)[:, None] * blocks["q"].astype(np.float64)).reshape(-1)[:n]


def load_capture(path: str) -> tuple[dict, list[bytes]]:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes())
        blobs = [z[a["blob"]].tobytes() for a in meta["arrays"]]
    return meta, blobs


def npy_array(data: bytes) -> np.ndarray:
    import io
    return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.mark.slow
def test_mixed_flower_federation_is_fedavg_of_what_each_node_sent(tmp_path):
    t0 = time.monotonic()
    m = model_mod.build(MODEL)
    data = write_client_data(str(tmp_path), "digits", 6, seed=0)   # 3 fleet devices, 2 ClientApps, numpy
    keyfile = os.path.join(tmp_path, "fleet.keys")
    with open(keyfile, "w") as f:
        f.write(keys.generate(range(3)))
    os.chmod(keyfile, 0o600)
    fed = Federation(tmp_path)
    out, capture = os.path.join(tmp_path, "out"), os.path.join(tmp_path, "capture")
    uplink_path = os.path.join(tmp_path, "fleet.sock")
    try:
        fed.start_superlink()
        udp = f"127.0.0.1:{free_tcp_port()}"
        fleet = fed.start("fleet", [sys.executable, "-m", "fedtiny.cli", "fleet", "--listen", udp, "--keys", keyfile,
                                    "--state", os.path.join(tmp_path, "fleet-state"), "--model", MODEL,
                                    "--min-clients", "3", "--round-timeout", "60", "--uplink", uplink_path])
        deadline = time.monotonic() + 30
        while not os.path.exists(uplink_path):
            assert fleet.poll() is None, fed.log("fleet")
            assert time.monotonic() < deadline, fed.log("fleet")
            time.sleep(0.1)
        for k in range(3):
            fed.start(f"device{k}", client_command(udp, k, keyfile, data[k], MODEL) + ["--rounds", str(ROUNDS)])
        n_numpy = 37
        fed.start_supernodes({"node-a": f'data="{data[3]}"', "node-b": f'data="{data[4]}"',
                              "node-fleet": f'fleet-uplink="{uplink_path}" fleet-timeout=100',
                              "node-numpy": f'kind="numpy" num-examples={n_numpy}'})
        res = fed.run(APP, f'num-server-rounds={ROUNDS} clip-norm={CLIP} out-dir="{out}" capture-dir="{capture}"',
                      timeout=400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert os.path.exists(os.path.join(out, f"global-{ROUNDS}.npy")), (
            res.stdout[-4000:] + fed.log("superlink")[-3000:] + fed.log("fleet")[-2000:])
    finally:
        fed.stop()
    elapsed = time.monotonic() - t0

    kinds_seen = set()
    clipped = []

    def clip(delta):
        """One device's update scaled to norm CLIP when above it (a fleet's sum is not: it clipped its devices)."""
        norm = np.sqrt(np.sum(delta * delta))
        clipped.append(norm > CLIP)
        return delta * (CLIP / norm) if norm > CLIP else delta

    eps = np.finfo(np.float32).eps
    for r in range(1, ROUNDS + 1):
        g = np.load(os.path.join(out, f"global-{r - 1}.npy")).astype(np.float64)
        got = np.load(os.path.join(out, f"global-{r}.npy")).astype(np.float64)
        replies = sorted(f for f in os.listdir(capture) if f.startswith(f"reply-{r}-"))
        assert len(replies) == 4, replies
        num = np.zeros(m.n_params)      # sum_k n_k (w_k - w_t) over every device behind every reply
        mag = np.zeros(m.n_params)      # sum_k |n_k (w_k - w_t)|: the scale of float32 rounding
        total = 0.0
        kinds = []
        for name in replies:
            meta, blobs = load_capture(os.path.join(capture, name))
            assert meta["error"] is None, meta
            a, blob = meta["arrays"][0], blobs[0]
            n = float(meta["metrics"]["metrics"]["num-examples"])
            if a["stype"] == "fedtiny.int8-update/1":
                term = n * clip(decode_int8_oracle(blob))
                kinds.append("int8")
            elif a["stype"] == "fedtiny.partial-sum/1":
                term = np.frombuffer(blob, "<f4").astype(np.float64)   # already sum n_k delta_k
                assert meta["metrics"]["metrics"]["fedtiny.updates"] == 3
                kinds.append("fleet")
            else:
                w = np.concatenate([npy_array(b).astype(np.float64).reshape(-1) for b in blobs])
                assert len(blobs) == 2 * len(m.tensors(m.init(0))) and n == n_numpy
                term = n * clip(w - g)
                kinds.append("numpy")
            num += term
            mag += np.abs(term)
            total += n
        kinds_seen |= set(kinds)
        assert sorted(kinds) == ["fleet", "int8", "int8", "numpy"], kinds
        expected = g + num / total
        tol = eps * (8 * mag / total + 2 * np.abs(g) + 2 * np.abs(expected)) + 1e-30
        err = np.abs(got - expected)
        assert (err <= tol).all(), f"round {r}: worst error {err.max():.3g}, tolerance there {tol[err.argmax()]:.3g}"
        assert np.abs(got - g).max() > 1e-4      # the round moved the model: the check is not vacuous
    assert any(clipped) and not all(clipped)      # both sides of the clipping were checked
    print(f"\n3 Flower rounds with 2 fedtiny ClientApps, a fleet of 3 devices and a numpy client: {elapsed:.1f} s")
