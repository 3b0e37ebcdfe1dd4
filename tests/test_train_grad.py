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


# ---- the layers of issue 17: stride, SAME padding, depthwise, 1-D, pooling, ReLU6, MSE ----------

def _same_pad(n, k, s):
    out = -(-n // s)
    return out, max((out - 1) * s + k - n, 0) // 2


@pytest.mark.parametrize("h,w,kh,kw,s,same", [
    (7, 6, 3, 3, 2, True), (5, 5, 3, 3, 2, False), (8, 7, 2, 3, 3, True), (6, 9, 4, 2, 1, True),
    (1, 11, 1, 5, 2, True), (1, 9, 1, 3, 1, False)])  # the last two: 1-D (conv1d)
def test_strided_padded_conv_matches_finite_differences(rng, h, w, kh, kw, s, same):
    if same:
        (oh, pt), (ow, pl) = _same_pad(h, kh, s), _same_pad(w, kw, s)
    else:
        oh, ow, pt, pl = (h - kh) // s + 1, (w - kw) // s + 1, 0, 0
    args = ((s, s), (pt, pl), (oh, ow))
    x, W, b = rng.normal(size=(2, h, w, 3)), rng.normal(size=(4, kh, kw, 3)), rng.normal(size=4)
    r = rng.normal(size=(2, oh, ow, 4))
    f = lambda: float(np.sum(r * ref.conv_any_fwd(x, W, b, *args)))  # noqa: E731
    dx, dW, db = ref.conv_any_bwd(r, x, W, *args)
    np.testing.assert_allclose(dx, central_diff(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dW, central_diff(f, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, central_diff(f, b), rtol=1e-6, atol=1e-8)
    # and the padded, strided oracle against the textbook loop
    y = ref.conv_any_fwd(x, W, b, *args)
    xp = np.pad(x, ((0, 0), (pt, kh + s * oh), (pl, kw + s * ow), (0, 0)))
    for i in range(oh):
        for j in range(ow):
            want = np.einsum("nhwc,ohwc->no", xp[:, i * s:i * s + kh, j * s:j * s + kw, :], W) + b
            np.testing.assert_allclose(y[:, i, j, :], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h,w,k,s,same", [(7, 6, 3, 2, True), (6, 5, 3, 1, False), (1, 10, 4, 3, True)])
def test_depthwise_matches_finite_differences(rng, h, w, k, s, same):
    if same:
        (oh, pt), (ow, pl) = _same_pad(h, 1 if h == 1 else k, s), _same_pad(w, k, s)
    else:
        oh, ow, pt, pl = (h - k) // s + 1, (w - k) // s + 1, 0, 0
    kh = 1 if h == 1 else k
    args = ((s if h > 1 else 1, s), (pt, pl), (oh, ow))
    x, W, b = rng.normal(size=(2, h, w, 5)), rng.normal(size=(5, kh, k)), rng.normal(size=5)
    r = rng.normal(size=(2, oh, ow, 5))
    f = lambda: float(np.sum(r * ref.depthwise_fwd(x, W, b, *args)))  # noqa: E731
    dx, dW, db = ref.depthwise_bwd(r, x, W, *args)
    np.testing.assert_allclose(dx, central_diff(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dW, central_diff(f, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, central_diff(f, b), rtol=1e-6, atol=1e-8)
    # each channel on its own is a one-channel convolution
    for ch in range(5):
        want = ref.conv_any_fwd(x[..., ch:ch + 1], W[ch][None, :, :, None], b[ch:ch + 1], *args)
        np.testing.assert_allclose(ref.depthwise_fwd(x, W, b, *args)[..., ch:ch + 1], want, rtol=1e-12)


@pytest.mark.parametrize("kind", ["avgpool", "maxpool"])
@pytest.mark.parametrize("h,w,kh,kw,s", [(7, 6, 2, 2, 2), (7, 7, 3, 3, 2), (1, 11, 1, 3, 2), (5, 6, 2, 3, 1)])
def test_pooling_matches_finite_differences(rng, kind, h, w, kh, kw, s):
    st = (1 if h == 1 else s, s)
    out = ((h - kh) // st[0] + 1, (w - kw) // st[1] + 1)
    x = rng.normal(size=(2, h, w, 3))  # distinct values: the maximum is differentiable
    r = rng.normal(size=(2,) + out + (3,))
    f = lambda: float(np.sum(r * ref.pool_any_fwd(x, kind, kh, kw, st, out)))  # noqa: E731
    np.testing.assert_allclose(ref.pool_any_bwd(r, x, kind, kh, kw, st, out), central_diff(f, x),
                               rtol=1e-6, atol=1e-8)


def test_gap_relu6_mse_match_finite_differences(rng):
    x = rng.normal(size=(2, 5, 3, 4)) * 4  # spans both ReLU6 kinks
    r = rng.normal(size=(2, 1, 1, 4))
    f = lambda: float(np.sum(r * ref.gap_fwd(x)))  # noqa: E731
    np.testing.assert_allclose(ref.gap_bwd(r, x), central_diff(f, x), rtol=1e-6, atol=1e-8)
    r2 = rng.normal(size=x.shape)
    f2 = lambda: float(np.sum(r2 * ref.relu6_fwd(x)[0]))  # noqa: E731
    np.testing.assert_allclose(ref.relu6_bwd(r2, ref.relu6_fwd(x)[0]), central_diff(f2, x), rtol=1e-6, atol=1e-8)
    z, y = rng.normal(size=(3, 5)), np.array([4, 0, 2])
    loss, d = ref.mse_onehot(z, y)
    np.testing.assert_allclose(d, central_diff(lambda: ref.mse_onehot(z, y)[0], z), rtol=1e-6, atol=1e-9)
    t = np.eye(5)[y]
    assert loss == pytest.approx(np.mean((z - t) ** 2), rel=1e-12)


NEW_SPECS = [
    "seq:9x7x2,conv3k3s2same,relu6,conv4k2x3same,relu,flatten,dense5",        # stride 2 SAME, 2x3 SAME
    "seq:13x12x3,conv4k3s2,relu,dwk3s2same,relu6,dwk2x3,gap,dense4",           # depthwise, GAP
    "seq:23x3,conv5k5s2same,relu,maxpool3s2,conv4k3,relu,avgpool2,flatten,dense3",  # 1-D
    "seq:10x9x2,avgpool3s2,conv3k3same,relu,maxpool2x3s1,flatten,dense4,mse",  # pools first, MSE
    "seq:12x12x1,dwk3same,relu,conv4k1,relu6,gap,dense3,mse",                  # depthwise as first layer
    "seq:17x2,dwk4s3,conv3k2,relu,pool,flatten,dense3",                        # 1-D depthwise, 1-D pool
]


@pytest.mark.parametrize("simd", fedtiny.simd_available())
@pytest.mark.parametrize("spec", NEW_SPECS)
def test_engine_gradient_matches_oracle_new_layers(spec, simd, rng):
    m = fm.build(spec)
    params = m.init(3)
    params += rng.normal(scale=0.05, size=m.n_params).astype(np.float32)
    n = 5
    x = (rng.normal(size=(n,) + m.input_shape) * 2).astype(np.float32)
    y = rng.integers(0, m.n_classes, n)
    want_loss, want = ref.loss_and_grad(m, params, x, y)
    before = fedtiny.simd_info()
    fedtiny.set_simd(simd)
    try:
        loss, got = ft.gradient(m, params, x, y)
        logits = m.predict(params, x)
    finally:
        fedtiny.set_simd(before)
    np.testing.assert_allclose(logits, ref.forward(m, params, x)[0], rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("spec", NEW_SPECS[:3])
def test_new_layers_sgd_matches_float64_reference(spec, rng):
    """Two epochs of local SGD with momentum against the float64 reference loop."""
    m = fm.build(spec)
    p = m.init(1)
    x = rng.normal(size=(10,) + m.input_shape).astype(np.float32)
    y = rng.integers(0, m.n_classes, 10)
    want = ref.sgd_reference(m, p, x, y, epochs=2, batch_size=4, lr=0.05, momentum=0.5, seed=2)
    ft.local_sgd(m, p, x, y, epochs=2, batch_size=4, lr=0.05, momentum=0.5, seed=2)
    np.testing.assert_allclose(p, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_depthwise_kernel_is_bit_exact_across_simd_paths(rng):
    """The depthwise layers' dispatched muladd gives the reference's bits on every path (odd channel
    counts exercise the vector tails). The dense head is the identity (FMA or not, x * 1 + 0 * y
    rounds to x), so logits and the depthwise gradients are compared bit for bit."""
    for spec in ("seq:9x8x13,dwk3s2same,relu6,dwk3,gap,dense13", "seq:31x37,dwk5same,relu,dwk3s2,gap,dense37"):
        m = fm.build(spec)
        p = m.init(4)
        dense = m.layers[-1]
        c = dense.w_shape[0]
        p[dense.w_offset:dense.w_offset + c * c] = np.eye(c, dtype=np.float32).ravel()
        p[dense.b_offset:dense.b_offset + c] = 0.0
        x = rng.normal(size=(3,) + m.input_shape).astype(np.float32)
        y = rng.integers(0, m.n_classes, 3)
        before = fedtiny.simd_info()
        outs = {}
        try:
            for simd in fedtiny.simd_available():
                fedtiny.set_simd(simd)
                outs[simd] = (m.predict(p, x), ft.gradient(m, p, x, y)[1][:dense.w_offset])
        finally:
            fedtiny.set_simd(before)
        assert np.abs(outs["scalar"][1]).max() > 0
        for simd, (logits, g) in outs.items():
            assert np.array_equal(logits, outs["scalar"][0]), simd
            assert np.array_equal(g, outs["scalar"][1]), simd


@pytest.mark.parametrize("spec", [NEW_SPECS[1], NEW_SPECS[2]])
def test_new_layers_train_with_int8_weights(spec, rng):
    """int8 weight storage (dequantize, update, stochastic re-quantize per tensor) on depthwise,
    strided and 1-D layers: one epoch moves each tensor as float32 does (same direction) and lands
    near it (off by less than 0.4 of the float32 move plus one int8 step: the seed's conv
    kind (stride-1 VALID conv) lands at about 0.2 on data like this)."""
    m = fm.build(spec)
    p0 = m.init(2)
    x = rng.normal(size=(16,) + m.input_shape).astype(np.float32)
    y = rng.integers(0, m.n_classes, 16)
    pf, pq = p0.copy(), p0.copy()
    ft.local_sgd(m, pf, x, y, epochs=1, batch_size=4, lr=0.05, seed=1)
    ft.local_sgd(m, pq, x, y, epochs=1, batch_size=4, lr=0.05, seed=1, weights="int8")
    for lay in m.layers:
        if not lay.w_shape:
            continue
        sl = slice(lay.w_offset, lay.w_offset + int(np.prod(lay.w_shape)))
        step = np.abs(p0[sl]).max() / 127
        moved_f, moved_q = pf[sl] - p0[sl], pq[sl] - p0[sl]
        assert np.abs(pq[sl] - pf[sl]).max() <= 0.4 * np.abs(moved_f).max() + step, lay.kind
        assert np.dot(moved_f, moved_q) > 0.9 * np.linalg.norm(moved_f) * np.linalg.norm(moved_q), lay.kind
