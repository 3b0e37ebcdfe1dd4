"""Today's models train bit for bit as before the layer-spec work (issue 17): the SHA-256 of the
parameters after one epoch of local SGD (plain, momentum, int8 weights) on a fixed batch, pinned
on x86-64 from the engine as it was before stride, padding, depthwise, conv1d, average pooling,
ReLU6 and MSE were added; and their architecture hashes (the wire's OFFER) are unchanged."""
import hashlib
import platform

import numpy as np
import pytest

import fedtiny
from fedtiny import model as fm
from fedtiny import train as ft

SEQ = "seq:9x8x2,conv3k3,relu,pool,conv4k3,relu,flatten,dense5"
# spec -> {path: (plain, momentum 0.9, int8)}; avx2 and avx512 share the GEMM's summation order
PINS = {
    "cnn": {"scalar": ("0e26974f9ab550dc", "143dc25f1224eeed", "32a3c6a0aee9d08e"),
            "simd": ("7e5101744ba905e0", "137ec7385f6f5faf", "f3e706bcd63cae51")},
    "2nn": {"scalar": ("add8f7b671314419", "d282b34a66a2b4aa", "b7db0b5f78728fab"),
            "simd": ("1fea508d59895e1d", "36bf1f7302c901ea", "b955b192c810e352")},
    SEQ: {"scalar": ("a12442b66ab686ab", "e168d471da80b092", "38ca9263b0c1545f"),
          "simd": ("fd100e3e10f0bd41", "bc7f718d16d02372", "38ca9263b0c1545f")},
    "mlp:64-32-10": {"scalar": ("bc21a349cace2c22", "e299101ab9d9bb3a", "2577b00978143f38"),
                     "simd": ("69af4c247943636c", "031c97f2fa952403", "2577b00978143f38")},
}
ARCH = {
    "cnn": "fc3d91acbf7aa1aa3129993c593a2233",
    "2nn": "364c4a8c4fbee132fe30bdf45ef53d5f",
    SEQ: "d7365cad7708780277fc6e4c45784885",
    "mlp:64-32-10": "02b9348d89de7081403b61e6ea555cf4",
    "seq:12x12x1,conv4k5,relu,pool,flatten,dense7,relu,dense3": "07c31b8408dbbab94280587b9b0ce7f4",
}


def _trained_hash(spec, simd, **kw):
    m = fm.build(spec)
    p = m.init(5)
    rng = np.random.default_rng(11)
    x = rng.random((12,) + m.input_shape).astype(np.float32)
    y = rng.integers(0, m.n_classes, 12)
    before = fedtiny.simd_info()
    fedtiny.set_simd(simd)
    try:
        ft.local_sgd(m, p, x, y, epochs=1, batch_size=4, lr=0.05, seed=3, **kw)
    finally:
        fedtiny.set_simd(before)
    return hashlib.sha256(p.tobytes()).hexdigest()[:16]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="pins taken on x86-64")
@pytest.mark.parametrize("simd", [s for s in fedtiny.simd_available() if s in ("scalar", "avx2", "avx512")])
@pytest.mark.parametrize("spec", list(PINS))
def test_existing_specs_train_bit_for_bit_as_before(spec, simd):
    want = PINS[spec]["scalar" if simd == "scalar" else "simd"]
    got = (_trained_hash(spec, simd), _trained_hash(spec, simd, momentum=0.9),
           _trained_hash(spec, simd, weights="int8"))
    assert got == want


@pytest.mark.parametrize("spec", list(ARCH))
def test_existing_specs_keep_their_architecture_hash(spec):
    assert fm.build(spec).arch_hash().hex() == ARCH[spec]
