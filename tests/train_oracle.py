"""numpy float64 reference of every training-engine layer (the oracle the C engine is checked
against) and the real Fashion-MNIST as the training tests take it."""
from __future__ import annotations

import numpy as np

def fashion(split: str = "train", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, 28, 28, 1) in [0, 1], y int64 (N,)): the first n images of the real
    Fashion-MNIST split, in file order, through fedtiny.datasets."""
    from fedtiny import datasets

    data = datasets.load("fashion-mnist")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y.astype(np.int64)


# ---- layers: forward returns (y, cache); backward(g, cache) returns (dx, dW, db) -----------

def dense_fwd(x, W, b):
    return x @ W.T + b, x


def dense_bwd(g, x, W):
    return g @ W, g.T @ x, g.sum(0)


def _cols(x, k):
    """(N, OH, OW, k*k*C) patches in (kh, kw, c) order, matching OHWI weights."""
    N, H, Wd, C = x.shape
    v = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # N, OH, OW, C, k, k
    return np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3)).reshape(N, H - k + 1, Wd - k + 1, k * k * C)


def conv_fwd(x, W, b):
    oc, k = W.shape[0], W.shape[1]
    cols = _cols(x, k)
    return cols @ W.reshape(oc, -1).T + b, x


def conv_bwd(g, x, W):
    oc, k, _, C = W.shape
    cols = _cols(x, k)
    dW = (g.reshape(-1, oc).T @ cols.reshape(-1, cols.shape[-1])).reshape(W.shape)
    db = g.reshape(-1, oc).sum(0)
    dcols = (g @ W.reshape(oc, -1)).reshape(g.shape[:3] + (k, k, C))
    dx = np.zeros_like(x)
    OH, OW = g.shape[1], g.shape[2]
    for kh in range(k):
        for kw in range(k):
            dx[:, kh:kh + OH, kw:kw + OW, :] += dcols[:, :, :, kh, kw, :]
    return dx, dW, db


def _windows(x):
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    v = x[:, :2 * OH, :2 * OW, :].reshape(N, OH, 2, OW, 2, C)
    return v.transpose(0, 1, 3, 5, 2, 4).reshape(N, OH, OW, C, 4)  # window order (0,0) (0,1) (1,0) (1,1)


def pool_fwd(x):
    return _windows(x).max(-1), x


def pool_bwd(g, x):
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    arg = _windows(x).argmax(-1)  # first maximum, as the C kernel
    d = np.zeros((N, OH, OW, C, 4))
    np.put_along_axis(d, arg[..., None], g[..., None], axis=-1)
    dx = np.zeros_like(x)
    dx[:, :2 * OH, :2 * OW, :] = d.reshape(N, OH, OW, C, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(N, 2 * OH, 2 * OW, C)
    return dx


def relu_fwd(x):
    y = np.maximum(x, 0.0)
    return y, y


def relu_bwd(g, y):
    return g * (y > 0)


def softmax_xent(z, y):
    """(mean loss, d mean loss / d z)."""
    m = z.max(1, keepdims=True)
    e = np.exp(z - m)
    p = e / e.sum(1, keepdims=True)
    loss = float(np.mean(np.log(e.sum(1)) + m[:, 0] - z[np.arange(len(y)), y]))
    d = p.copy()
    d[np.arange(len(y)), y] -= 1.0
    return loss, d / len(y)


# ---- window layers with stride and SAME padding (TensorFlow's: the smaller half first) ----------

def _padded(x, kh, kw, stride, pad, out):
    """x zero-padded so that `out` windows of kh x kw at `stride` fit, the first `pad` rows/columns
    in front; returns the padded x and the windows (N, OH, OW, C, kh, kw)."""
    N, H, W, C = x.shape
    (sh, sw), (pt, pl), (OH, OW) = stride, pad, out
    pb, pr = max((OH - 1) * sh + kh - H - pt, 0), max((OW - 1) * sw + kw - W - pl, 0)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    v = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :OH, :OW]
    return xp, v


def _unwindow(dv, x_shape, kh, kw, stride, pad, out):
    """Adjoint of _padded: window gradients (N, OH, OW, C, kh, kw) summed back onto x."""
    N, H, W, C = x_shape
    (sh, sw), (pt, pl), (OH, OW) = stride, pad, out
    pb, pr = max((OH - 1) * sh + kh - H - pt, 0), max((OW - 1) * sw + kw - W - pl, 0)
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C))
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw, :] += dv[..., i, j]
    return dxp[:, pt:pt + H, pl:pl + W, :]


def conv_any_fwd(x, W, b, stride, pad, out):
    """Conv2D, OHWI weights, any stride and padding."""
    oc, kh, kw, C = W.shape
    _, v = _padded(x, kh, kw, stride, pad, out)
    cols = v.transpose(0, 1, 2, 4, 5, 3).reshape(v.shape[:3] + (kh * kw * C,))
    return cols @ W.reshape(oc, -1).T + b


def conv_any_bwd(g, x, W, stride, pad, out):
    oc, kh, kw, C = W.shape
    _, v = _padded(x, kh, kw, stride, pad, out)
    cols = v.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * C)
    dW = (g.reshape(-1, oc).T @ cols).reshape(W.shape)
    dv = (g @ W.reshape(oc, -1)).reshape(g.shape[:3] + (kh, kw, C)).transpose(0, 1, 2, 5, 3, 4)
    return _unwindow(dv, x.shape, kh, kw, stride, pad, out), dW, g.reshape(-1, oc).sum(0)


def depthwise_fwd(x, W, b, stride, pad, out):
    """Depthwise conv, multiplier 1, weights W[c][kh][kw]."""
    C, kh, kw = W.shape
    _, v = _padded(x, kh, kw, stride, pad, out)
    return np.einsum("nhwcij,cij->nhwc", v, W) + b


def depthwise_bwd(g, x, W, stride, pad, out):
    C, kh, kw = W.shape
    _, v = _padded(x, kh, kw, stride, pad, out)
    dW = np.einsum("nhwcij,nhwc->cij", v, g)
    dv = np.einsum("nhwc,cij->nhwcij", g, W)
    return _unwindow(dv, x.shape, kh, kw, stride, pad, out), dW, g.reshape(-1, C).sum(0)


def pool_any_fwd(x, kind, kh, kw, stride, out):
    _, v = _padded(x, kh, kw, stride, (0, 0), out)
    v = v.reshape(v.shape[:4] + (kh * kw,))
    return v.mean(-1) if kind == "avgpool" else v.max(-1)


def pool_any_bwd(g, x, kind, kh, kw, stride, out):
    _, v = _padded(x, kh, kw, stride, (0, 0), out)
    v = v.reshape(v.shape[:4] + (kh * kw,))
    if kind == "avgpool":
        dv = np.broadcast_to(g[..., None] / (kh * kw), v.shape)
    else:
        dv = np.zeros(v.shape)
        np.put_along_axis(dv, v.argmax(-1)[..., None], g[..., None], axis=-1)  # first maximum, row-major
    return _unwindow(dv.reshape(v.shape[:4] + (kh, kw)), x.shape, kh, kw, stride, (0, 0), out)


def gap_fwd(x):
    return x.mean(axis=(1, 2), keepdims=True)


def gap_bwd(g, x):
    return np.broadcast_to(g / (x.shape[1] * x.shape[2]), x.shape).copy()


def relu6_fwd(x):
    y = np.clip(x, 0.0, 6.0)
    return y, y


def relu6_bwd(g, y):
    return g * ((y > 0) & (y < 6))


def mse_onehot(z, y):
    """(mean over samples of the mean over outputs of (z - onehot)^2, its gradient)."""
    t = np.zeros_like(z)
    t[np.arange(len(y)), y] = 1.0
    e = z - t
    return float(np.mean(np.sum(e * e, 1) / z.shape[1])), 2.0 * e / (z.shape[0] * z.shape[1])


def _win_args(lay):
    return lay.stride, lay.pad, lay.out_shape[:2]


# ---- a whole model, parameters in the interchange layout --------------------------------

def forward(model, params, x):
    """Logits (float64) and the per-layer caches."""
    p = params.astype(np.float64)
    a = x.astype(np.float64).reshape((x.shape[0],) + tuple(model.layers[0].in_shape))
    caches = []
    for lay in model.layers:
        if lay.w_shape:
            W = p[lay.w_offset:lay.w_offset + int(np.prod(lay.w_shape))].reshape(lay.w_shape)
            b = p[lay.b_offset:lay.b_offset + lay.b_shape[0]]
            if lay.kind == "dense":
                a, c = dense_fwd(a.reshape(a.shape[0], -1), W, b)
                a = a.reshape((a.shape[0],) + tuple(lay.out_shape))
            elif lay.kind == "depthwise":
                a, c = depthwise_fwd(a, W, b, *_win_args(lay)), a
            else:
                a, c = conv_any_fwd(a, W, b, *_win_args(lay)), a
        elif lay.kind in ("avgpool", "maxpool"):
            a, c = pool_any_fwd(a, lay.kind, lay.k, lay.kw, lay.stride, lay.out_shape[:2]), a
        elif lay.kind == "gap":
            a, c = gap_fwd(a), a
        elif lay.kind == "relu6":
            a, c = relu6_fwd(a)
        elif lay.kind == "maxpool2":
            a, c = pool_fwd(a)
        elif lay.kind == "relu":
            a, c = relu_fwd(a)
        else:
            a, c = a.reshape(a.shape[0], 1, 1, -1), a.shape
        caches.append(c)
    return a.reshape(a.shape[0], -1), caches


def loss_and_grad(model, params, x, y):
    """Mean loss (softmax cross-entropy, or MSE against one-hot labels for an 'mse' model) and its
    gradient (float64, interchange layout)."""
    p = params.astype(np.float64)
    z, caches = forward(model, params, x)
    loss, g = (mse_onehot if getattr(model, "loss", "xent") == "mse" else softmax_xent)(z, np.asarray(y))
    grad = np.zeros(model.n_params)
    g = g.reshape((g.shape[0],) + tuple(model.layers[-1].out_shape))
    for lay, c in zip(reversed(model.layers), reversed(caches)):
        if lay.w_shape:
            W = p[lay.w_offset:lay.w_offset + int(np.prod(lay.w_shape))].reshape(lay.w_shape)
            if lay.kind == "dense":
                dx, dW, db = dense_bwd(g.reshape(g.shape[0], -1), c, W)
                dx = dx.reshape((dx.shape[0],) + tuple(lay.in_shape))
            elif lay.kind == "depthwise":
                dx, dW, db = depthwise_bwd(g, c, W, *_win_args(lay))
            else:
                dx, dW, db = conv_any_bwd(g, c, W, *_win_args(lay))
            grad[lay.w_offset:lay.w_offset + dW.size] = dW.ravel()
            grad[lay.b_offset:lay.b_offset + db.size] = db
            g = dx
        elif lay.kind in ("avgpool", "maxpool"):
            g = pool_any_bwd(g, c, lay.kind, lay.k, lay.kw, lay.stride, lay.out_shape[:2])
        elif lay.kind == "gap":
            g = gap_bwd(g, c)
        elif lay.kind == "relu6":
            g = relu6_bwd(g, c)
        elif lay.kind == "maxpool2":
            g = pool_bwd(g, c)
        elif lay.kind == "relu":
            g = relu_bwd(g, c)
        else:
            g = g.reshape((g.shape[0],) + tuple(lay.in_shape))
    return loss, grad


def sgd_reference(model, params, x, y, *, epochs, batch_size, lr, momentum=0.0, weight_decay=0.0,
                  prox_mu=0.0, global_params=None, seed=0, max_steps=None):
    """float64 SGD with the engine's documented update rule and shuffling; returns new params."""
    w = params.astype(np.float64)
    wg = None if global_params is None else global_params.astype(np.float64)
    v = np.zeros_like(w)
    from fedtiny.train import epoch_order  # the engine's documented shuffle (tested on its own)
    steps = 0
    for epoch in range(epochs):
        idx = epoch_order(len(x), seed, epoch)
        for j in range(0, len(x), batch_size):
            if max_steps is not None and steps >= max_steps:
                return w
            b = idx[j:j + batch_size]
            _, g = loss_and_grad(model, w, x[b], y[b])
            g = g + weight_decay * w
            if prox_mu:
                g = g + prox_mu * (w - wg)
            v = momentum * v + g
            w = w - lr * v
            steps += 1
    return w
