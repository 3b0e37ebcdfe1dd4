"""Gradients: each numpy float64 layer against central finite differences, then the C engine's
whole-model gradient against that oracle, on every SIMD path this CPU has."""
import numpy as np
import pytest

import fedtiny
from fedtiny import model as fm
from fedtiny import train as ft

import train_oracle as ref


def central_diff(f, a, eps=1e-6):
    """d f / d a for scalar f, by central differences in float64."""
    g = np.zeros_like(a)
    flat, gf = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm_ = f()
        flat[i] = old
        gf[i] = (fp - fm_) / (2 * eps)
    return g


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_dense_layer_matches_finite_differences(rng):
    x, W, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    r = rng.normal(size=(3, 4))  # loss = sum(r * y): a random linear read-out of the output
    f = lambda: float(np.sum(r * ref.dense_fwd(x, W, b)[0]))  # noqa: E731
    dx, dW, db = ref.dense_bwd(r, x, W)
    np.testing.assert_allclose(dx, central_diff(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dW, central_diff(f, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, central_diff(f, b), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k,c", [(3, 2), (5, 1), (5, 3)])
def test_conv_layer_matches_finite_differences(rng, k, c):
    x, W, b = rng.normal(size=(2, 7, 6, c)), rng.normal(size=(3, k, k, c)), rng.normal(size=3)
    r = rng.normal(size=(2, 7 - k + 1, 6 - k + 1, 3))
    f = lambda: float(np.sum(r * ref.conv_fwd(x, W, b)[0]))  # noqa: E731
    dx, dW, db = ref.conv_bwd(r, x, W)
    np.testing.assert_allclose(dx, central_diff(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dW, central_diff(f, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, central_diff(f, b), rtol=1e-6, atol=1e-8)


def test_conv_reference_is_a_direct_convolution(rng):
    """The oracle itself against the textbook loop (NHWC input, OHWI weights, VALID)."""
    x, W, b = rng.normal(size=(1, 6, 5, 2)), rng.normal(size=(3, 3, 3, 2)), rng.normal(size=3)
    y = ref.conv_fwd(x, W, b)[0]
    for oh in range(4):
        for ow in range(3):
            for o in range(3):
                want = np.sum(x[0, oh:oh + 3, ow:ow + 3, :] * W[o]) + b[o]
                assert y[0, oh, ow, o] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("h,w", [(6, 4), (7, 5)])
def test_maxpool_and_relu_match_finite_differences(rng, h, w):
    x = rng.normal(size=(2, h, w, 3))  # distinct values: no ties, the max is differentiable
    r = rng.normal(size=(2, h // 2, w // 2, 3))
    f = lambda: float(np.sum(r * ref.pool_fwd(x)[0]))  # noqa: E731
    np.testing.assert_allclose(ref.pool_bwd(r, x), central_diff(f, x), rtol=1e-6, atol=1e-8)
    r2 = rng.normal(size=x.shape)
    f2 = lambda: float(np.sum(r2 * ref.relu_fwd(x)[0]))  # noqa: E731
    np.testing.assert_allclose(ref.relu_bwd(r2, ref.relu_fwd(x)[0]), central_diff(f2, x), rtol=1e-6, atol=1e-8)


def test_softmax_xent_matches_finite_differences(rng):
    z, y = rng.normal(size=(4, 6)) * 3, np.array([0, 5, 2, 2])
    loss, d = ref.softmax_xent(z, y)
    np.testing.assert_allclose(d, central_diff(lambda: ref.softmax_xent(z, y)[0], z), rtol=1e-6, atol=1e-9)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), y])), rel=1e-12)


SPECS = [
    "mlp:64-32-10",
    "seq:9x8x2,conv3k3,relu,pool,conv4k3,relu,flatten,dense5",      # 3x3 convs, odd pool input
    "seq:12x12x1,conv4k5,relu,pool,flatten,dense7,relu,dense3",     # 5x5 conv
    "seq:10x10x3,pool,conv5k3,relu,pool,flatten,dense4",            # pooling before the first conv
    "seq:20,dense300,relu,dense17",                                 # dense chunks (several row chunks)
]


@pytest.mark.parametrize("simd", fedtiny.simd_available())
@pytest.mark.parametrize("spec", SPECS)
def test_engine_gradient_matches_oracle(spec, simd, rng):
    m = fm.build(spec)
    params = m.init(3)
    params += rng.normal(scale=0.05, size=m.n_params).astype(np.float32)  # nonzero biases too
    n = 5
    x = rng.normal(size=(n,) + m.input_shape).astype(np.float32)
    y = rng.integers(0, m.n_classes, n)
    want_loss, want = ref.loss_and_grad(m, params, x, y)
    before = fedtiny.simd_info()
    fedtiny.set_simd(simd)
    try:
        loss, got = ft.gradient(m, params, x, y)
    finally:
        fedtiny.set_simd(before)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("spec", ["2nn", "cnn"])
def test_builtin_model_gradient_matches_oracle(spec, rng):
    m = fm.build(spec)
    params = m.init(0)
    x = rng.random((3,) + m.input_shape).astype(np.float32)
    y = np.array([1, 7, 3])
    want_loss, want = ref.loss_and_grad(m, params, x, y)
    loss, got = ft.gradient(m, params, x, y)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * np.abs(want).max())
