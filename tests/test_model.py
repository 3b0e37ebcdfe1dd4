"""Model specs, the parameter layout, initialisation and predict against the numpy oracle."""
import numpy as np
import pytest

from fedtiny import model as fm

import train_oracle as ref


def test_builtin_specs_have_the_published_sizes():
    two, cnn = fm.build("2nn"), fm.build("cnn")
    assert two.n_params == 199_210 and two.input_shape == (784,) and two.n_classes == 10
    assert cnn.n_params == 184_586 and cnn.input_shape == (28, 28, 1) and cnn.n_classes == 10
    assert [lay.kind for lay in cnn.layers] == ["conv2d", "relu", "maxpool2", "conv2d", "relu", "maxpool2",
                                               "flatten", "dense", "relu", "dense"]
    assert fm.build("mlp:784-64-10").n_params == 784 * 64 + 64 + 64 * 10 + 10
    assert fm.build("mlp:64-32-10").input_shape == (64,)


def test_layout_is_contiguous_weight_then_bias():
    m = fm.build("cnn")
    conv1, conv2, d1, d2 = [lay for lay in m.layers if lay.w_shape]
    assert conv1.w_shape == (32, 5, 5, 1) and conv2.w_shape == (64, 5, 5, 32)  # OHWI
    assert d1.w_shape == (128, 1024) and d2.w_shape == (10, 128)                # [out][in]
    off = 0
    for lay in (conv1, conv2, d1, d2):
        assert lay.w_offset == off
        off += int(np.prod(lay.w_shape))
        assert lay.b_offset == off
        off += lay.b_shape[0]
    assert off == m.n_params
    p = m.init(0)
    w, b = m.tensors(p)[2]
    assert np.shares_memory(w, p) and w.shape == (128, 1024) and b.shape == (128,)


def test_init_is_deterministic_he_and_glorot_uniform():
    m = fm.build("2nn")
    a, b, c = m.init(5), m.init(5), m.init(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.dtype == np.float32
    (w1, b1), (w2, _), (w3, b3) = m.tensors(a)
    assert np.all(b1 == 0) and np.all(b3 == 0)
    for w, bound in ((w1, np.sqrt(6 / 784)), (w2, np.sqrt(6 / 200)), (w3, np.sqrt(6 / 210))):
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform: std = bound / sqrt(3)
        assert abs(w.mean()) < 0.05 * bound


def test_init_uses_the_counter_based_generator():
    """u_i = (lowbias32(i * 0x9E3779B1 + key) >> 8) * 2^-24, key = ft_rng_key(seed): computed here in
    numpy so a firmware port can check its own init against the same numbers."""
    m = fm.build("mlp:64-32-10")
    seed = 11
    M32 = 0xFFFFFFFF

    def h(x):
        x = x & M32
        x ^= x >> 16
        x = (x * 0x7FEB352D) & M32
        x ^= x >> 15
        x = (x * 0x846CA68B) & M32
        return x ^ (x >> 16)

    key = h(seed & M32) ^ h(((seed >> 32) ^ 0x9E3779B9) & M32)
    i = np.arange(64 * 32, dtype=np.uint64)
    u = (h((i * 0x9E3779B1 + key) & M32) >> 8).astype(np.float64) * 2.0 ** -24
    bound = np.float32(np.sqrt(6.0 / 64))
    want = (-bound + (bound - -bound) * u.astype(np.float32)).astype(np.float32)
    np.testing.assert_allclose(m.init(seed)[:64 * 32], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", ["2nn", "cnn", "mlp:64-32-10", "seq:9x9x3,conv4k3,relu,pool,flatten,dense6"])
def test_predict_matches_oracle(spec):
    m = fm.build(spec)
    rng = np.random.default_rng(1)
    p = m.init(2) + rng.normal(scale=0.01, size=m.n_params).astype(np.float32)
    x = rng.random((fm.PREDICT_BATCH + 7,) + m.input_shape).astype(np.float32)  # two chunks
    want, _ = ref.forward(m, p, x)
    got = m.predict(p, x)
    assert got.shape == (x.shape[0], m.n_classes) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_predict_accepts_any_shape_with_the_right_sample_size():
    m = fm.build("2nn")
    p = m.init(0)
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(m.predict(p, x), m.predict(p, x.reshape(3, 784)))
    np.testing.assert_array_equal(m.predict(p, x), m.predict(p, x.astype(np.float64)))


def test_predict_uses_a_forward_only_arena():
    """Two alternating activation buffers and no gradient buffers: cnn at batch 32 needs a
    third less than training does."""
    m = fm.build("cnn")
    infer, train = 4 * m._arena_floats(32, fm.FLAG_INFER), m.arena_bytes(32)
    assert infer < 0.75 * train
    assert infer >= 4 * (m.n_params + 2 * 32 * 24 * 24 * 32)  # weights + two first-conv outputs


def test_arena_grows_with_batch_and_options():
    m = fm.build("2nn")
    a10, a32 = m.arena_bytes(10), m.arena_bytes(32)
    assert a32 > a10 > 4 * m.n_params
    assert m.arena_bytes(10, momentum=True) - a10 >= 4 * m.n_params
    assert m.arena_bytes(10, prox=True) - a10 >= 4 * m.n_params


@pytest.mark.parametrize("spec,match", [
    ("resnet", "unknown model spec"),
    ("mlp:784", "at least an input and an output"),
    ("mlp:784-x-10", "must be integers"),
    ("mlp:10-1", "at least 2 classes"),
    ("seq:5x5x1,conv2k7,relu,flatten,dense3", "does not fit"),
    ("seq:5x5x1,conv2k3,dense3", "non-flat"),
    ("seq:7,conv2k3,flatten,dense3", "HxWxC"),
    ("seq:6x6x1,conv2k3,relu", "last layer must be dense"),
    ("mlp:100000000-10", "too large"),
    (42, "must be a string"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        fm.build(spec)


def test_bad_predict_input():
    m = fm.build("mlp:64-32-10")
    p = m.init(0)
    with pytest.raises(ValueError, match="2410 parameters"):
        m.predict(p[:-1], np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="each sample must hold 64"):
        m.predict(p, np.zeros((2, 65), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.predict(p, np.full((2, 64), np.inf, np.float32))
    with pytest.raises(ValueError, match="numeric"):
        m.predict(p, np.array([["a"] * 64]))
    with pytest.raises(ValueError, match="batch_size"):
        m.arena_bytes(0)


@pytest.mark.parametrize("spec", ["2nn", "cnn", "mlp:64-32-10"])
def test_pytorch_init_draws_torch_default_bounds(spec):
    """nn.Linear / nn.Conv2d defaults: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch docs)."""
    from fedtiny.model import build
    m = build(spec)
    p = m.init(3, "pytorch")
    assert not np.array_equal(p, m.init(3))   # another scheme than fedtiny's
    np.testing.assert_array_equal(p, m.init(3, "pytorch"))   # deterministic
    for lay, (w, b) in zip([lay for lay in m.layers if lay.w_shape], m.tensors(p)):
        bound = 1.0 / np.sqrt(np.prod(lay.w_shape[1:]))
        for t in (w.ravel(), b):
            assert np.abs(t).max() <= bound
        # a uniform's std is bound/sqrt(3); the biases are no longer zero
        assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)
        assert np.abs(b).max() > 0.3 * bound


def test_init_scheme_is_checked():
    from fedtiny.model import build
    with pytest.raises(ValueError, match="init scheme must be one of fedtiny, pytorch"):
        build("2nn").init(0, "xavier")


@pytest.mark.parametrize("spec,match", [
    ("seq:5x5x8,conv4k3s2same,relu,conv4k7,flatten,dense3",
     r"layer 3 \(conv2d 7x7 stride 1 valid\): the window does not fit input 3x3x4"),
    ("seq:32x3,conv8k5x3,flatten,dense3", r"layer 1 'conv8k5x3': a 1-D input takes a single window size"),
    ("seq:64,dwk3,flatten,dense3", r"layer 1 'dwk3' needs an HxWxC or LxC input"),
    ("seq:8x8x1,maxpool2same,flatten,dense3", r"layer 1 'maxpool2same': pooling is VALID only"),
    ("seq:8x8x1,conv4k0,flatten,dense3", r"layer 1 'conv4k0': sizes and strides must be >= 1"),
    ("seq:8x8x1,conv4k3,gelu,flatten,dense3", r"layer 2 'gelu' is not a layer"),
    ("seq:8x8x1,conv4k3,relu6,dense3", r"layer 3 \(dense 3\): dense layer after a non-flat shape"),
    ("seq:8x8x1,gap,dense3,mse,relu", r"layer 3 'mse' is the loss, not a layer: put it last"),
])
def test_bad_layer_specs_name_the_layer(spec, match):
    with pytest.raises(ValueError, match=match):
        fm.build(spec)


def test_new_layer_shapes_and_arch_text():
    """Shapes follow TensorFlow's SAME/VALID rules; arch_text spells window, stride and padding for
    every layer kind but the seed's (whose lines stay as they were), and the loss when it is MSE."""
    m = fm.build("seq:28x28x1,conv8k3s2same,relu6,dwk3same,relu6,conv16k1,relu,avgpool2,gap,dense10")
    assert [lay.out_shape for lay in m.layers] == [(14, 14, 8), (14, 14, 8), (14, 14, 8), (14, 14, 8), (14, 14, 16),
                                                   (14, 14, 16), (7, 7, 16), (1, 1, 16), (1, 1, 10)]
    assert m.n_params == 8 * 9 + 8 + 8 * 9 + 8 + 16 * 8 + 16 + 16 * 10 + 10
    assert m.arch_text() == (
        "fedtiny-arch/1\n"
        "conv2d 28x28x1 -> 14x14x8 k3x3 s2x2 same\n"
        "relu6 14x14x8 -> 14x14x8 k0\n"
        "depthwise 14x14x8 -> 14x14x8 k3x3 s1x1 same\n"
        "relu6 14x14x8 -> 14x14x8 k0\n"
        "conv2d 14x14x8 -> 14x14x16 k1\n"
        "relu 14x14x16 -> 14x14x16 k0\n"
        "avgpool 14x14x16 -> 7x7x16 k2x2 s2x2 valid\n"
        "gap 7x7x16 -> 1x1x16 k0\n"
        "dense 1x1x16 -> 1x1x10 k0\n")
    one_d = fm.build("seq:128x3,conv16k5s2same,relu,pool,conv16k3,relu,gap,dense6,mse")
    assert one_d.input_shape == (128, 3)
    assert [lay.out_shape for lay in one_d.layers][:4] == [(1, 64, 16), (1, 64, 16), (1, 32, 16), (1, 30, 16)]
    assert one_d.arch_text().splitlines()[1] == "conv1d 1x128x3 -> 1x64x16 k1x5 s1x2 same"
    assert one_d.arch_text().endswith("loss mse\n")
    assert one_d.arch_hash() != fm.build("seq:128x3,conv16k5s2same,relu,pool,conv16k3,relu,gap,dense6").arch_hash()
