/* train_net.c — the on-device training engine: layer forward/backward, softmax cross-entropy,
 * SGD (momentum, weight decay, FedProx) in float32 or on int8 block weights, one arena.
 *
 * Written as the reference: plain loops for every layer, with the FLOP-heavy products all going
 * through ft_gemm_f32 (dispatched to the SIMD bodies in csrc/arch/..._gemm.c). Data layout:
 *   activations  NHWC, batch-major;
 *   weights      training layout [fan_in][fan_out] (see fedtiny.h), so
 *                dense forward   Y[n][out]  = X[n][in] * Wt[in][out]
 *                dense dW        dWt[in][out] = X^T * dY           (A = X read transposed)
 *                dense dX        dX[n][in]  = dY * W[out][in]      (W = a transposed chunk of Wt)
 *                conv, per sample, on an im2col matrix col[P][K] (K = kh*kw*ic, P = oh*ow):
 *                forward  Y[P][oc] = col * Wt[K][oc];  dWt += col^T * dY;  dcol = dY * W[oc][K].
 * Dense layers are walked in chunks of input rows (a whole number of int8 blocks), so the
 * backward pass needs only chunk-sized scratch and each chunk is updated as soon as its gradient
 * exists: the full gradient vector is never held. In int8 mode a chunk is dequantized, used,
 * updated and re-quantized with stochastic rounding (unbiased: small updates survive on average).
 */
#include <math.h>
#include <string.h>

#include "ft_internal.h"

#define CHUNK_TARGET 16384 /* floats of one dense weight chunk (64 KiB: stays in L2) */
#define ALIGN_FLOATS 16    /* 64-byte alignment of every arena region */

typedef struct {
    size_t in_buf[FT_MAX_LAYERS], out_buf[FT_MAX_LAYERS]; /* activation offsets */
    size_t chunk_rows[FT_MAX_LAYERS];                     /* dense: rows of Wt per chunk */
    size_t wq[FT_MAX_LAYERS], bq[FT_MAX_LAYERS];          /* int8: first block of weight / bias */
    int need_dx[FT_MAX_LAYERS];
    size_t w, v, g, d0, d1, col, wscr, wt, gscr, gb, gy, labels, total;
    size_t max_act;
} layout_t;

static size_t al(size_t n) { return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; }
static size_t act_size(const ft_layer *l, int out) {
    return out ? (size_t)(l->out_h * l->out_w * l->out_c) : (size_t)(l->in_h * l->in_w * l->in_c);
}
static int has_params(const ft_layer *l) {
    return l->kind == FT_LAYER_DENSE || l->kind == FT_LAYER_CONV2D || l->kind == FT_LAYER_DEPTHWISE;
}
static int is_window(const ft_layer *l) {
    return l->kind == FT_LAYER_CONV2D || l->kind == FT_LAYER_DEPTHWISE || l->kind == FT_LAYER_AVGPOOL ||
           l->kind == FT_LAYER_MAXPOOL;
}
static int in_place(const ft_layer *l) {
    return l->kind == FT_LAYER_RELU || l->kind == FT_LAYER_RELU6 || l->kind == FT_LAYER_FLATTEN;
}
/* Weight tensor as [fan_in][fan_out] in training layout. */
static size_t fan_in(const ft_layer *l) {
    if (l->kind == FT_LAYER_DENSE) return (size_t)l->in_c;
    if (l->kind == FT_LAYER_DEPTHWISE) return (size_t)(l->k * l->kw);
    return (size_t)(l->k * l->kw * l->in_c);
}
/* SAME padding before the first row / column (TensorFlow: the smaller half); 0 for VALID. */
static int64_t pad_before(int64_t in, int64_t out, int64_t k, int64_t s, int64_t same) {
    if (!same) return 0;
    const int64_t total = (out - 1) * s + k - in;
    return total > 0 ? total / 2 : 0;
}
static int64_t pad_top(const ft_layer *l) { return pad_before(l->in_h, l->out_h, l->k, l->stride_h, l->same); }
static int64_t pad_left(const ft_layer *l) { return pad_before(l->in_w, l->out_w, l->kw, l->stride_w, l->same); }
/* The original stride-1 VALID square conv: im2col copies whole rows (kept as it was, bit for bit). */
static int plain_conv(const ft_layer *l) {
    return l->k == l->kw && l->stride_h == 1 && l->stride_w == 1 && !l->same;
}
static int window_ok(int64_t in, int64_t out, int64_t k, int64_t s, int64_t same) {
    if (k < 1 || k > (1 << 10) || s < 1 || s > (1 << 10)) return 0;
    if (same) return out == (in + s - 1) / s;
    return k <= in && out == (in - k) / s + 1;
}
static size_t fan_out(const ft_layer *l) { return (size_t)l->out_c; }
static size_t gcd(size_t a, size_t b) { while (b) { size_t t = a % b; a = b; b = t; } return a; }

ft_status ft_net_check(const ft_net *net) {
    if (!net || !net->layers || net->n_layers < 1 || net->n_layers > FT_MAX_LAYERS || net->batch < 1 ||
        net->n_params < 1 || net->n_params > (1 << 28) || (net->flags & ~31u))
        return FT_ERR_ARG;
    if ((net->flags & FT_TRAIN_INT8) && (net->flags & FT_TRAIN_MOMENTUM)) return FT_ERR_ARG;
    int64_t off = 0;
    for (int i = 0; i < net->n_layers; i++) {
        const ft_layer *l = &net->layers[i];
        if (l->in_h < 1 || l->in_w < 1 || l->in_c < 1 || l->out_h < 1 || l->out_w < 1 || l->out_c < 1) return FT_ERR_ARG;
        if (l->in_h > (1 << 20) || l->in_w > (1 << 20) || l->in_c > (1 << 26) || l->out_h > (1 << 20) ||
            l->out_w > (1 << 20) || l->out_c > (1 << 26) || l->k < 0 || l->k > (1 << 10))
            return FT_ERR_ARG;
        if (l->in_h * l->in_w * l->in_c > (1 << 26) || l->out_c > (1 << 20)) return FT_ERR_ARG;
        /* a batch of activations stays below 2^28 floats, so no arena size can wrap a 32-bit size_t */
        if ((uint64_t)net->batch * (uint64_t)(l->in_h * l->in_w * l->in_c) > (1u << 28) ||
            (uint64_t)net->batch * (uint64_t)(l->out_h * l->out_w * l->out_c) > (1u << 28))
            return FT_ERR_ARG;
        if (i > 0) {
            const ft_layer *p = &net->layers[i - 1];
            if (p->out_h != l->in_h || p->out_w != l->in_w || p->out_c != l->in_c) return FT_ERR_ARG;
        }
        if (is_window(l)) {
            if (!window_ok(l->in_h, l->out_h, l->k, l->stride_h, l->same) ||
                !window_ok(l->in_w, l->out_w, l->kw, l->stride_w, l->same) || (l->same & ~1))
                return FT_ERR_ARG;
            if (l->kind != FT_LAYER_CONV2D && l->out_c != l->in_c) return FT_ERR_ARG;
            if ((l->kind == FT_LAYER_AVGPOOL || l->kind == FT_LAYER_MAXPOOL) && l->same) return FT_ERR_ARG;
        } else if (l->kw != 0 || l->stride_h != 0 || l->stride_w != 0 || l->same != 0) {
            return FT_ERR_ARG;
        }
        switch (l->kind) {
        case FT_LAYER_DENSE:
            if (l->in_h != 1 || l->in_w != 1 || l->out_h != 1 || l->out_w != 1 || l->k != 0) return FT_ERR_ARG;
            break;
        case FT_LAYER_CONV2D: case FT_LAYER_DEPTHWISE: case FT_LAYER_AVGPOOL: case FT_LAYER_MAXPOOL:
            break; /* checked above */
        case FT_LAYER_GAP:
            if (l->out_h != 1 || l->out_w != 1 || l->out_c != l->in_c || l->k != 0) return FT_ERR_ARG;
            break;
        case FT_LAYER_RELU6:
            if (l->out_h != l->in_h || l->out_w != l->in_w || l->out_c != l->in_c || l->k != 0) return FT_ERR_ARG;
            break;
        case FT_LAYER_MAXPOOL2:
            if (l->out_h != l->in_h / 2 || l->out_w != l->in_w / 2 || l->out_c != l->in_c) return FT_ERR_ARG;
            break;
        case FT_LAYER_RELU:
            if (l->out_h != l->in_h || l->out_w != l->in_w || l->out_c != l->in_c) return FT_ERR_ARG;
            break;
        case FT_LAYER_FLATTEN:
            if (l->out_h != 1 || l->out_w != 1 || l->out_c != l->in_h * l->in_w * l->in_c) return FT_ERR_ARG;
            break;
        default: return FT_ERR_ARG;
        }
        if (has_params(l)) {
            if (l->w_off != off) return FT_ERR_ARG;
            off += (int64_t)(fan_in(l) * fan_out(l));
            if (l->b_off != off) return FT_ERR_ARG;
            off += l->out_c;
        } else if (l->w_off != -1 || l->b_off != -1) {
            return FT_ERR_ARG;
        }
    }
    if (off != net->n_params || net->layers[net->n_layers - 1].kind != FT_LAYER_DENSE) return FT_ERR_ARG;
    return FT_OK;
}

static int make_layout(const ft_net *net, layout_t *L) {
    if (ft_net_check(net) != FT_OK) return 0;
    memset(L, 0, sizeof *L);
    const size_t B = (size_t)net->batch, n = (size_t)net->n_params;
    const int q8 = (net->flags & FT_TRAIN_INT8) != 0;
    size_t pos = 0, max_act = act_size(&net->layers[0], 0), col = 0, ch = 0, max_out = 0;
    size_t blocks = 0;
    int seen_param = 0;
    /* weights: float32 training layout, or per-tensor int8 blocks (each tensor starts a block) */
    for (int i = 0; i < net->n_layers; i++) {
        const ft_layer *l = &net->layers[i];
        L->need_dx[i] = seen_param;
        if (!has_params(l)) continue;
        seen_param = 1;
        const size_t fi = fan_in(l), fo = fan_out(l);
        L->wq[i] = blocks;
        blocks += ft_q8_nblocks(fi * fo);
        L->bq[i] = blocks;
        blocks += ft_q8_nblocks(fo);
        if (l->kind == FT_LAYER_DENSE) {
            const size_t unit = FT_QK / gcd(fo, FT_QK);
            size_t rows = CHUNK_TARGET / fo / unit * unit;
            if (rows < unit) rows = unit;
            if (rows > fi) rows = fi;
            L->chunk_rows[i] = rows;
            if (rows * fo > ch) ch = rows * fo;
        } else {
            if (fi * fo > ch) ch = fi * fo;
            const size_t c = l->kind == FT_LAYER_CONV2D ? (size_t)(l->out_h * l->out_w) * fi : 0;
            if (c > col) col = c;
        }
        if (fo > max_out) max_out = fo;
    }
    L->w = pos;
    pos += al(q8 ? blocks * sizeof(ft_block_q8) / sizeof(float) : n);
    L->v = pos;
    if (net->flags & FT_TRAIN_MOMENTUM) pos += al(n);
    L->g = pos;
    if (net->flags & FT_TRAIN_PROX) pos += al(n);
    const int infer = (net->flags & FT_NET_INFER) != 0;
    /* activations: the input, then each layer's output (ReLU and Flatten reuse their input);
     * forward-only arenas alternate between two buffers instead of keeping every layer's */
    for (int i = 0; i < net->n_layers; i++)
        if (act_size(&net->layers[i], 1) > max_act) max_act = act_size(&net->layers[i], 1);
    size_t cur = pos, region[2] = {pos, pos + al(B * max_act)};
    int r = 0;
    pos += infer ? 2 * al(B * max_act) : al(B * act_size(&net->layers[0], 0));
    for (int i = 0; i < net->n_layers; i++) {
        const ft_layer *l = &net->layers[i];
        L->in_buf[i] = cur;
        if (in_place(l)) {
            L->out_buf[i] = cur;
        } else if (infer) {
            r = !r;
            L->out_buf[i] = cur = region[r];
        } else {
            L->out_buf[i] = pos;
            cur = pos;
            pos += al(B * act_size(l, 1));
        }
    }
    L->max_act = max_act;
    /* gradient ping-pong buffers, each as large as the largest gradient backward() puts in it */
    size_t dmax[2] = {(size_t)net->layers[net->n_layers - 1].out_c, 0};
    int cur_buf = 0;
    for (int i = net->n_layers - 1; i >= 0; i--) {
        const ft_layer *l = &net->layers[i];
        if (in_place(l)) continue;
        if (!L->need_dx[i] && !has_params(l)) break;
        if (L->need_dx[i] && act_size(l, 0) > dmax[!cur_buf]) dmax[!cur_buf] = act_size(l, 0);
        cur_buf = !cur_buf;
    }
    if (infer) dmax[0] = dmax[1] = 0;
    L->d0 = pos; pos += al(B * dmax[0]);
    L->d1 = pos; pos += al(B * dmax[1]);
    L->col = pos; pos += al(col);
    L->wscr = pos; pos += q8 ? al(ch) : 0;             /* dequantized weight chunk */
    L->wt = pos; pos += infer ? 0 : al(ch);             /* transposed chunk (input gradient) */
    L->gscr = pos; pos += infer ? 0 : al(ch);           /* weight-gradient chunk */
    L->gb = pos; pos += al(max_out);
    L->gy = pos; pos += (infer || q8) ? 0 : al(B * max_out); /* -lr * dY for the fused dense update */
    L->labels = pos; pos += infer ? 0 : al(B); /* int32 labels of the current batch */
    L->total = pos;
    return 1;
}

size_t ft_train_arena_floats(const ft_net *net) {
    layout_t L;
    return make_layout(net, &L) ? L.total : 0;
}

static void transpose(const float *src, size_t R, size_t C, float *dst) {
    ft_train_kernels()->transpose_f32(src, R, C, dst);
}

/* ---- int8 weight storage ------------------------------------------------------------- */

static ft_block_q8 *q8_base(const layout_t *L, float *arena) { return (ft_block_q8 *)(void *)(arena + L->w); }

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ---- the per-call context ------------------------------------------------------------ */

typedef struct {
    const ft_net *net;
    const layout_t *L;
    float *arena;
    int q8;
    const ft_sgd_hyper *h; /* NULL: gradient mode (write grad, no update) */
    float *grad;           /* gradient mode: interchange-layout output */
    uint64_t step;
} ctx_t;

/* Weights of rows [r0, r0+rows) of layer i's training-layout tensor as floats: the arena itself
 * (float32 mode: updates write through) or a dequantized scratch copy (int8 mode). */
static float *weights_rows(ctx_t *c, int i, size_t r0, size_t rows) {
    const ft_layer *l = &c->net->layers[i];
    const size_t fo = fan_out(l);
    if (!c->q8) return c->arena + c->L->w + (size_t)l->w_off + r0 * fo;
    float *dst = c->arena + c->L->wscr;
    ft_dequantize_q8(q8_base(c->L, c->arena) + c->L->wq[i] + r0 * fo / FT_QK, rows * fo, dst);
    return dst;
}
static const float *bias(ctx_t *c, int i) {
    const ft_layer *l = &c->net->layers[i];
    if (!c->q8) return c->arena + c->L->w + (size_t)l->b_off;
    float *dst = c->arena + c->L->gb;
    ft_dequantize_q8(q8_base(c->L, c->arena) + c->L->bq[i], (size_t)l->out_c, dst);
    return dst;
}

/* Apply the SGD update to `cnt` parameters at training-layout offset `off` (values `w`, which is
 * the arena itself in float mode and a dequantized scratch in int8 mode, then re-quantized into
 * `q` with stochastic rounding). Training mode only (c->h set). */
static ft_status update(ctx_t *c, size_t off, float *w, const float *g, size_t cnt, ft_block_q8 *q) {
    const ft_sgd_hyper *h = c->h;
    const float lr = h->lr, wd = h->weight_decay, mu = h->prox_mu, m = h->momentum;
    const float *wg = (c->net->flags & FT_TRAIN_PROX) ? c->arena + c->L->g + off : NULL;
    float *v = (c->net->flags & FT_TRAIN_MOMENTUM) ? c->arena + c->L->v + off : NULL;
    ft_train_kernels()->sgd_f32(w, g, v, wg, cnt, lr, m, wd, mu);
    if (q) {
        const uint64_t s = mix64(h->seed ^ mix64(c->step + 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)off << 1));
        return ft_quantize_q8(w, cnt, NULL, FT_ROUND_STOCHASTIC, s, q);
    }
    return FT_OK;
}

/* ---- layers ---------------------------------------------------------------------------- */

static void im2col(const float *x, const ft_layer *l, float *col) {
    const size_t k = (size_t)l->k, C = (size_t)l->in_c, W = (size_t)l->in_w;
    const size_t OH = (size_t)l->out_h, OW = (size_t)l->out_w, K = k * k * C;
    for (size_t oh = 0; oh < OH; oh++)
        for (size_t ow = 0; ow < OW; ow++) {
            float *dst = col + (oh * OW + ow) * K;
            for (size_t kh = 0; kh < k; kh++) { /* a loop, not memcpy: rows are as short as 5 floats */
                const float *src = x + ((oh + kh) * W + ow) * C;
                float *d = dst + kh * k * C;
                for (size_t j = 0; j < k * C; j++) d[j] = src[j];
            }
        }
}
static void col2im_add(const float *col, const ft_layer *l, float *dx) {
    const size_t k = (size_t)l->k, C = (size_t)l->in_c, W = (size_t)l->in_w;
    const size_t OH = (size_t)l->out_h, OW = (size_t)l->out_w, K = k * k * C;
    for (size_t oh = 0; oh < OH; oh++)
        for (size_t ow = 0; ow < OW; ow++) {
            const float *src = col + (oh * OW + ow) * K;
            for (size_t kh = 0; kh < k; kh++) {
                float *d = dx + ((oh + kh) * W + ow) * C;
                const float *s = src + kh * k * C;
                for (size_t j = 0; j < k * C; j++) d[j] += s[j];
            }
        }
}

/* Any window: k x kw, strides, SAME padding (rows outside the input are zeros in col and dropped
 * in col2im). Same (kh, kw, c) column order as im2col. */
static void im2col_any(const float *x, const ft_layer *l, float *col) {
    const int64_t kh = l->k, kw = l->kw, C = l->in_c, H = l->in_h, W = l->in_w, pt = pad_top(l), pl = pad_left(l);
    const size_t K = (size_t)(kh * kw * C);
    for (int64_t oh = 0; oh < l->out_h; oh++)
        for (int64_t ow = 0; ow < l->out_w; ow++) {
            float *dst = col + (size_t)(oh * l->out_w + ow) * K;
            for (int64_t i = 0; i < kh; i++) {
                const int64_t ih = oh * l->stride_h + i - pt;
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = ow * l->stride_w + j - pl;
                    float *d = dst + (size_t)((i * kw + j) * C);
                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
                        for (int64_t ch = 0; ch < C; ch++) d[ch] = 0.0f;
                    } else {
                        const float *src = x + (size_t)((ih * W + iw) * C);
                        for (int64_t ch = 0; ch < C; ch++) d[ch] = src[ch];
                    }
                }
            }
        }
}
static void col2im_add_any(const float *col, const ft_layer *l, float *dx) {
    const int64_t kh = l->k, kw = l->kw, C = l->in_c, H = l->in_h, W = l->in_w, pt = pad_top(l), pl = pad_left(l);
    const size_t K = (size_t)(kh * kw * C);
    for (int64_t oh = 0; oh < l->out_h; oh++)
        for (int64_t ow = 0; ow < l->out_w; ow++) {
            const float *src = col + (size_t)(oh * l->out_w + ow) * K;
            for (int64_t i = 0; i < kh; i++) {
                const int64_t ih = oh * l->stride_h + i - pt;
                if (ih < 0 || ih >= H) continue;
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = ow * l->stride_w + j - pl;
                    if (iw < 0 || iw >= W) continue;
                    float *d = dx + (size_t)((ih * W + iw) * C);
                    const float *sc = src + (size_t)((i * kw + j) * C);
                    for (int64_t ch = 0; ch < C; ch++) d[ch] += sc[ch];
                }
            }
        }
}

/* Depthwise convolution of one sample, per window position: y[p][c] = b[c] + sum x * w[kh][kw][c]
 * (forward), or the two gradients dw[kh][kw][c] += x * g, dx += w * g (backward; dx may be NULL);
 * the channel loop is the dispatched muladd kernel. */
static void depthwise_fwd(const float *x, const ft_layer *l, const float *w, const float *b, float *y) {
    const ft_muladd_fn madd = ft_train_kernels()->muladd_f32;
    const int64_t kh = l->k, kw = l->kw, C = l->in_c, H = l->in_h, W = l->in_w, pt = pad_top(l), pl = pad_left(l);
    for (int64_t oh = 0; oh < l->out_h; oh++)
        for (int64_t ow = 0; ow < l->out_w; ow++) {
            float *o = y + (size_t)((oh * l->out_w + ow) * C);
            memcpy(o, b, (size_t)C * sizeof(float));
            for (int64_t i = 0; i < kh; i++) {
                const int64_t ih = oh * l->stride_h + i - pt;
                if (ih < 0 || ih >= H) continue;
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = ow * l->stride_w + j - pl;
                    if (iw < 0 || iw >= W) continue;
                    madd(o, x + (size_t)((ih * W + iw) * C), w + (size_t)((i * kw + j) * C), (size_t)C);
                }
            }
        }
}
static void depthwise_bwd(const float *x, const ft_layer *l, const float *w, const float *g, float *dw, float *db,
                          float *dx) {
    const ft_muladd_fn madd = ft_train_kernels()->muladd_f32;
    const int64_t kh = l->k, kw = l->kw, C = l->in_c, H = l->in_h, W = l->in_w, pt = pad_top(l), pl = pad_left(l);
    for (int64_t oh = 0; oh < l->out_h; oh++)
        for (int64_t ow = 0; ow < l->out_w; ow++) {
            const float *gp = g + (size_t)((oh * l->out_w + ow) * C);
            for (int64_t ch = 0; ch < C; ch++) db[ch] += gp[ch];
            for (int64_t i = 0; i < kh; i++) {
                const int64_t ih = oh * l->stride_h + i - pt;
                if (ih < 0 || ih >= H) continue;
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = ow * l->stride_w + j - pl;
                    if (iw < 0 || iw >= W) continue;
                    const size_t xo = (size_t)((ih * W + iw) * C), wo = (size_t)((i * kw + j) * C);
                    madd(dw + wo, x + xo, gp, (size_t)C);
                    if (dx) madd(dx + xo, w + wo, gp, (size_t)C);
                }
            }
        }
}

/* Pooling over k x kw windows (VALID) of one sample: average (the window sum times 1/(k*kw)) or
 * maximum; backward adds into dx (windows may overlap), the maximum's gradient to the first
 * maximum in row-major window order. */
static void pool_any_fwd(const float *x, const ft_layer *l, float *y) {
    const int64_t kh = l->k, kw = l->kw, C = l->in_c, W = l->in_w;
    const int avg = l->kind == FT_LAYER_AVGPOOL;
    const float inv = 1.0f / (float)(kh * kw);
    for (int64_t oh = 0; oh < l->out_h; oh++)
        for (int64_t ow = 0; ow < l->out_w; ow++) {
            float *o = y + (size_t)((oh * l->out_w + ow) * C);
            const float *x0 = x + (size_t)(((oh * l->stride_h) * W + ow * l->stride_w) * C);
            for (int64_t ch = 0; ch < C; ch++) o[ch] = x0[ch];
            for (int64_t i = 0; i < kh; i++)
                for (int64_t j = (i == 0); j < kw; j++) {
                    const float *xp = x0 + (size_t)((i * W + j) * C);
                    if (avg)
                        for (int64_t ch = 0; ch < C; ch++) o[ch] += xp[ch];
                    else
                        for (int64_t ch = 0; ch < C; ch++) o[ch] = xp[ch] > o[ch] ? xp[ch] : o[ch];
                }
            if (avg)
                for (int64_t ch = 0; ch < C; ch++) o[ch] *= inv;
        }
}
static void pool_any_bwd(const float *x, const float *y, const ft_layer *l, const float *g, float *dx) {
    const int64_t kh = l->k, kw = l->kw, C = l->in_c, W = l->in_w;
    const float inv = 1.0f / (float)(kh * kw);
    for (int64_t oh = 0; oh < l->out_h; oh++)
        for (int64_t ow = 0; ow < l->out_w; ow++) {
            const size_t po = (size_t)((oh * l->out_w + ow) * C);
            const size_t base = (size_t)(((oh * l->stride_h) * W + ow * l->stride_w) * C);
            if (l->kind == FT_LAYER_AVGPOOL) {
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t j = 0; j < kw; j++) {
                        float *d = dx + base + (size_t)((i * W + j) * C);
                        for (int64_t ch = 0; ch < C; ch++) d[ch] += g[po + (size_t)ch] * inv;
                    }
                continue;
            }
            for (int64_t ch = 0; ch < C; ch++) {
                const float m = y[po + (size_t)ch];
                int done = 0;
                for (int64_t i = 0; i < kh && !done; i++)
                    for (int64_t j = 0; j < kw; j++) {
                        const size_t o = base + (size_t)((i * W + j) * C + ch);
                        if (x[o] == m) { dx[o] += g[po + (size_t)ch]; done = 1; break; }
                    }
            }
        }
}

static void add_bias(float *y, const float *b, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < cols; j++) y[r * cols + j] += b[j];
}

/* One 2x2 window over C channels: the gradient goes to the first maximum in (0,0) (0,1) (1,0)
 * (1,1) order, found by comparing with the stored output; selects, so the loop vectorizes. */
static void pool_bwd_window(const float *restrict x00, const float *restrict x01, const float *restrict x10,
                            const float *restrict x11, const float *restrict m, const float *restrict g,
                            float *restrict d00, float *restrict d01, float *restrict d10, float *restrict d11,
                            size_t C) {
    (void)x11;
    for (size_t ch = 0; ch < C; ch++) {
        const float mc = m[ch];
        float rest = g[ch]; /* what the later positions may still receive */
        d00[ch] = x00[ch] == mc ? rest : 0.0f;
        rest = x00[ch] == mc ? 0.0f : rest;
        d01[ch] = x01[ch] == mc ? rest : 0.0f;
        rest = x01[ch] == mc ? 0.0f : rest;
        d10[ch] = x10[ch] == mc ? rest : 0.0f;
        d11[ch] = x10[ch] == mc ? 0.0f : rest;
    }
}

static void forward_layer(ctx_t *c, int i, size_t n) {
    const ft_layer *l = &c->net->layers[i];
    const float *x = c->arena + c->L->in_buf[i];
    float *y = c->arena + c->L->out_buf[i];
    const size_t in_sz = act_size(l, 0), out_sz = act_size(l, 1);
    switch (l->kind) {
    case FT_LAYER_DENSE: {
        const size_t fi = fan_in(l), fo = fan_out(l);
        if (!c->q8) {
            ft_gemm_f32(n, fo, fi, x, (ptrdiff_t)fi, 1, weights_rows(c, i, 0, fi), fo, y, fo, 0);
        } else {
            const size_t rows = c->L->chunk_rows[i];
            for (size_t r0 = 0; r0 < fi; r0 += rows) {
                const size_t kc = fi - r0 < rows ? fi - r0 : rows;
                ft_gemm_f32(n, fo, kc, x + r0, (ptrdiff_t)fi, 1, weights_rows(c, i, r0, kc), fo, y, fo, r0 > 0);
            }
        }
        add_bias(y, bias(c, i), n, fo);
        break;
    }
    case FT_LAYER_CONV2D: {
        const size_t K = fan_in(l), OC = fan_out(l), P = (size_t)(l->out_h * l->out_w);
        const float *w = weights_rows(c, i, 0, K);
        const float *b = bias(c, i);
        float *col = c->arena + c->L->col;
        const int plain = plain_conv(l);
        for (size_t s = 0; s < n; s++) {
            if (plain) im2col(x + s * in_sz, l, col);
            else im2col_any(x + s * in_sz, l, col);
            ft_gemm_f32(P, OC, K, col, (ptrdiff_t)K, 1, w, OC, y + s * out_sz, OC, 0);
            add_bias(y + s * out_sz, b, P, OC);
        }
        break;
    }
    case FT_LAYER_MAXPOOL2: {
        const size_t C = (size_t)l->in_c, W = (size_t)l->in_w, OH = (size_t)l->out_h, OW = (size_t)l->out_w;
        for (size_t s = 0; s < n; s++) {
            const float *xs = x + s * in_sz;
            float *ys = y + s * out_sz;
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    const float *p00 = xs + ((2 * oh) * W + 2 * ow) * C, *p01 = p00 + C;
                    const float *p10 = p00 + W * C, *p11 = p10 + C;
                    float *o = ys + (oh * OW + ow) * C;
                    for (size_t ch = 0; ch < C; ch++) {
                        float m = p00[ch];
                        if (p01[ch] > m) m = p01[ch];
                        if (p10[ch] > m) m = p10[ch];
                        if (p11[ch] > m) m = p11[ch];
                        o[ch] = m;
                    }
                }
        }
        break;
    }
    case FT_LAYER_RELU:
        for (size_t j = 0; j < n * out_sz; j++) y[j] = y[j] > 0.0f ? y[j] : 0.0f;
        break;
    case FT_LAYER_RELU6:
        for (size_t j = 0; j < n * out_sz; j++) {
            const float v = y[j] > 0.0f ? y[j] : 0.0f;
            y[j] = v < 6.0f ? v : 6.0f;
        }
        break;
    case FT_LAYER_DEPTHWISE: {
        const float *w = weights_rows(c, i, 0, fan_in(l));
        const float *b = bias(c, i);
        for (size_t s = 0; s < n; s++) depthwise_fwd(x + s * in_sz, l, w, b, y + s * out_sz);
        break;
    }
    case FT_LAYER_AVGPOOL: case FT_LAYER_MAXPOOL:
        for (size_t s = 0; s < n; s++) pool_any_fwd(x + s * in_sz, l, y + s * out_sz);
        break;
    case FT_LAYER_GAP: {
        const size_t C = (size_t)l->in_c, P = (size_t)(l->in_h * l->in_w);
        const float inv = 1.0f / (float)P;
        for (size_t s = 0; s < n; s++) {
            const float *xs = x + s * in_sz;
            float *o = y + s * C;
            for (size_t ch = 0; ch < C; ch++) o[ch] = 0.0f;
            for (size_t p = 0; p < P; p++)
                for (size_t ch = 0; ch < C; ch++) o[ch] += xs[p * C + ch];
            for (size_t ch = 0; ch < C; ch++) o[ch] *= inv;
        }
        break;
    }
    default: break; /* FLATTEN */
    }
}

/* g: gradient w.r.t. layer i's output; dx: where the gradient w.r.t. its input goes. */
static ft_status backward_layer(ctx_t *c, int i, size_t n, float *g, float *dx) {
    const ft_layer *l = &c->net->layers[i];
    const layout_t *L = c->L;
    const float *x = c->arena + L->in_buf[i];
    const size_t in_sz = act_size(l, 0), out_sz = act_size(l, 1);
    const int need_dx = L->need_dx[i];
    float *wt = c->arena + L->wt, *gs = c->arena + L->gscr, *gb = c->arena + L->gb;
    ft_status st = FT_OK;
    switch (l->kind) {
    case FT_LAYER_DENSE: {
        const size_t fi = fan_in(l), fo = fan_out(l), rows = L->chunk_rows[i];
        /* bias first: in int8 mode `gb` doubles as the dequantized bias, used only in forward */
        for (size_t j = 0; j < fo; j++) gb[j] = 0.0f;
        for (size_t s = 0; s < n; s++)
            for (size_t j = 0; j < fo; j++) gb[j] += g[s * fo + j];
        /* plain SGD on float32 weights: W += X^T * (-lr * dY) straight into the weights, one GEMM
         * and no gradient buffer (same value as update() up to the rounding of lr * g) */
        const int fused = c->h && !c->q8 && c->h->momentum == 0.0f && c->h->weight_decay == 0.0f &&
                          !(c->net->flags & FT_TRAIN_PROX);
        float *gy = c->arena + L->gy;
        if (fused)
            for (size_t j = 0; j < n * fo; j++) gy[j] = -c->h->lr * g[j];
        for (size_t r0 = 0; r0 < fi; r0 += rows) {
            const size_t kc = fi - r0 < rows ? fi - r0 : rows;
            float *w = weights_rows(c, i, r0, kc);
            if (need_dx) {
                transpose(w, kc, fo, wt); /* W chunk [fo][kc] */
                ft_gemm_f32(n, kc, fo, g, (ptrdiff_t)fo, 1, wt, kc, dx + r0, fi, 0);
            }
            if (fused) {
                ft_gemm_f32(kc, fo, n, x + r0, 1, (ptrdiff_t)fi, gy, fo, w, fo, 1);
                continue;
            }
            ft_gemm_f32(kc, fo, n, x + r0, 1, (ptrdiff_t)fi, g, fo, gs, fo, 0);
            if (!c->h) {
                transpose(gs, kc, fo, wt);
                for (size_t o = 0; o < fo; o++) memcpy(c->grad + l->w_off + o * fi + r0, wt + o * kc, kc * sizeof(float));
            } else {
                st = update(c, (size_t)l->w_off + r0 * fo, w, gs, kc * fo,
                            c->q8 ? q8_base(L, c->arena) + L->wq[i] + r0 * fo / FT_QK : NULL);
                if (st != FT_OK) return st;
            }
        }
        break;
    }
    case FT_LAYER_CONV2D: {
        const size_t K = fan_in(l), OC = fan_out(l), P = (size_t)(l->out_h * l->out_w);
        float *w = weights_rows(c, i, 0, K);
        float *col = c->arena + L->col;
        if (need_dx) {
            transpose(w, K, OC, wt); /* W [OC][K] */
            memset(dx, 0, n * in_sz * sizeof(float));
        }
        memset(gs, 0, K * OC * sizeof(float));
        for (size_t j = 0; j < OC; j++) gb[j] = 0.0f;
        const int plain = plain_conv(l);
        for (size_t s = 0; s < n; s++) {
            const float *gsmp = g + s * out_sz;
            if (plain) im2col(x + s * in_sz, l, col);
            else im2col_any(x + s * in_sz, l, col);
            ft_gemm_f32(K, OC, P, col, 1, (ptrdiff_t)K, gsmp, OC, gs, OC, 1);
            for (size_t p = 0; p < P; p++)
                for (size_t j = 0; j < OC; j++) gb[j] += gsmp[p * OC + j];
            if (need_dx) {
                ft_gemm_f32(P, K, OC, gsmp, (ptrdiff_t)OC, 1, wt, K, col, K, 0);
                if (plain) col2im_add(col, l, dx + s * in_sz);
                else col2im_add_any(col, l, dx + s * in_sz);
            }
        }
        if (!c->h) {
            transpose(gs, K, OC, c->grad + l->w_off);
        } else {
            st = update(c, (size_t)l->w_off, w, gs, K * OC, c->q8 ? q8_base(L, c->arena) + L->wq[i] : NULL);
            if (st != FT_OK) return st;
        }
        break;
    }
    case FT_LAYER_MAXPOOL2: {
        /* the gradient goes to the first maximum in (0,0) (0,1) (1,0) (1,1) order; written as
         * selects against the stored output so the channel loop vectorizes */
        const size_t C = (size_t)l->in_c, W = (size_t)l->in_w, OH = (size_t)l->out_h, OW = (size_t)l->out_w;
        const float *y = c->arena + L->out_buf[i];
        if ((l->in_h | l->in_w) & 1) memset(dx, 0, n * in_sz * sizeof(float)); /* the odd row/column */
        for (size_t s = 0; s < n; s++) {
            const float *xs = x + s * in_sz, *gsmp = g + s * out_sz, *ys = y + s * out_sz;
            float *ds = dx + s * in_sz;
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    const size_t o00 = ((2 * oh) * W + 2 * ow) * C, o01 = o00 + C, o10 = o00 + W * C, o11 = o10 + C;
                    pool_bwd_window(xs + o00, xs + o01, xs + o10, xs + o11, ys + (oh * OW + ow) * C,
                                    gsmp + (oh * OW + ow) * C, ds + o00, ds + o01, ds + o10, ds + o11, C);
                }
        }
        break;
    }
    case FT_LAYER_RELU: { /* in place: g lives in the buffer the caller passes as both */
        const float *y = c->arena + L->out_buf[i];
        for (size_t j = 0; j < n * out_sz; j++) g[j] = y[j] > 0.0f ? g[j] : 0.0f;
        break;
    }
    case FT_LAYER_RELU6: { /* in place; the gradient passes where 0 < y < 6 */
        const float *y = c->arena + L->out_buf[i];
        for (size_t j = 0; j < n * out_sz; j++) g[j] = (y[j] > 0.0f && y[j] < 6.0f) ? g[j] : 0.0f;
        break;
    }
    case FT_LAYER_DEPTHWISE: {
        const size_t K = fan_in(l), C = fan_out(l);
        float *w = weights_rows(c, i, 0, K);
        memset(gs, 0, K * C * sizeof(float));
        for (size_t j = 0; j < C; j++) gb[j] = 0.0f;
        if (need_dx) memset(dx, 0, n * in_sz * sizeof(float));
        for (size_t s = 0; s < n; s++)
            depthwise_bwd(x + s * in_sz, l, w, g + s * out_sz, gs, gb, need_dx ? dx + s * in_sz : NULL);
        if (!c->h) {
            transpose(gs, K, C, c->grad + l->w_off);
        } else {
            st = update(c, (size_t)l->w_off, w, gs, K * C, c->q8 ? q8_base(L, c->arena) + L->wq[i] : NULL);
            if (st != FT_OK) return st;
        }
        break;
    }
    case FT_LAYER_AVGPOOL: case FT_LAYER_MAXPOOL: {
        const float *y = c->arena + L->out_buf[i];
        memset(dx, 0, n * in_sz * sizeof(float));
        for (size_t s = 0; s < n; s++) pool_any_bwd(x + s * in_sz, y + s * out_sz, l, g + s * out_sz, dx + s * in_sz);
        break;
    }
    case FT_LAYER_GAP: {
        const size_t C = (size_t)l->in_c, P = (size_t)(l->in_h * l->in_w);
        const float inv = 1.0f / (float)P;
        for (size_t s = 0; s < n; s++)
            for (size_t p = 0; p < P; p++)
                for (size_t ch = 0; ch < C; ch++) dx[s * in_sz + p * C + ch] = g[s * C + ch] * inv;
        break;
    }
    default: break;
    }
    if (has_params(l) && c->h) {
        float *b = c->q8 ? gs : c->arena + L->w + (size_t)l->b_off;
        if (c->q8) ft_dequantize_q8(q8_base(L, c->arena) + L->bq[i], fan_out(l), b);
        st = update(c, (size_t)l->b_off, b, gb, fan_out(l), c->q8 ? q8_base(L, c->arena) + L->bq[i] : NULL);
    } else if (has_params(l)) {
        memcpy(c->grad + l->b_off, gb, fan_out(l) * sizeof(float));
    }
    return st;
}

static void forward(ctx_t *c, size_t n) {
    for (int i = 0; i < c->net->n_layers; i++) forward_layer(c, i, n);
}

/* Softmax cross-entropy over the logits; writes d(mean loss)/d(logits) into d. */
static double softmax_xent(const float *logits, const int32_t *y, size_t n, size_t C, float *d) {
    double loss = 0.0;
    for (size_t s = 0; s < n; s++) {
        const float *z = logits + s * C;
        float *ds = d + s * C;
        float m = z[0];
        for (size_t j = 1; j < C; j++) if (z[j] > m) m = z[j];
        float sum = 0.0f;
        for (size_t j = 0; j < C; j++) { ds[j] = expf(z[j] - m); sum += ds[j]; }
        loss += (double)(logf(sum) + m - z[y[s]]);
        const float inv = 1.0f / (sum * (float)n);
        for (size_t j = 0; j < C; j++) ds[j] *= inv;
        ds[y[s]] -= 1.0f / (float)n;
    }
    return loss;
}

/* Mean squared error against one-hot labels, per sample the mean over the C outputs:
 * loss_s = sum_j (z_j - t_j)^2 / C; writes d(mean loss)/d(z) = 2 (z - t) / (n C) into d. */
static double mse_onehot(const float *z, const int32_t *y, size_t n, size_t C, float *d) {
    double loss = 0.0;
    const float sc = 2.0f / ((float)n * (float)C);
    for (size_t s = 0; s < n; s++) {
        float sum = 0.0f;
        for (size_t j = 0; j < C; j++) {
            const float e = z[s * C + j] - ((int32_t)j == y[s] ? 1.0f : 0.0f);
            sum += e * e;
            d[s * C + j] = sc * e;
        }
        loss += (double)(sum / (float)C);
    }
    return loss;
}

static ft_status backward(ctx_t *c, size_t n, const int32_t *y, double *loss) {
    const layout_t *L = c->L;
    const int last = c->net->n_layers - 1;
    const size_t C = (size_t)c->net->layers[last].out_c;
    float *cur = c->arena + L->d0, *other = c->arena + L->d1;
    *loss = (c->net->flags & FT_LOSS_MSE) ? mse_onehot(c->arena + L->out_buf[last], y, n, C, cur)
                                          : softmax_xent(c->arena + L->out_buf[last], y, n, C, cur);
    if (!(*loss == *loss) || isinf(*loss)) return FT_ERR_NONFINITE;
    for (int i = last; i >= 0; i--) {
        const int kind = (int)c->net->layers[i].kind;
        if (kind == FT_LAYER_FLATTEN) continue;
        if (kind == FT_LAYER_RELU || kind == FT_LAYER_RELU6) {
            if (L->need_dx[i]) backward_layer(c, i, n, cur, cur);
            continue;
        }
        if (!L->need_dx[i] && !has_params(&c->net->layers[i])) break;
        const ft_status st = backward_layer(c, i, n, cur, other);
        if (st != FT_OK) return st;
        float *t = cur; cur = other; other = t;
    }
    return FT_OK;
}

/* ---- public entry points ------------------------------------------------------------- */

static ft_status load_tensor(ctx_t *c, int i, const float *src, float *dst_f32) {
    /* interchange W[fo][fi] -> training Wt[fi][fo]; int8: chunk by chunk through wscr */
    const ft_layer *l = &c->net->layers[i];
    const size_t fi = fan_in(l), fo = fan_out(l);
    if (!c->q8 || dst_f32) {
        transpose(src + l->w_off, fo, fi, dst_f32 + l->w_off);
        memcpy(dst_f32 + l->b_off, src + l->b_off, fo * sizeof(float));
        return FT_OK;
    }
    const size_t rows = l->kind == FT_LAYER_DENSE ? c->L->chunk_rows[i] : fi;
    float *tmp = c->arena + c->L->wscr;
    ft_block_q8 *q = q8_base(c->L, c->arena);
    for (size_t r0 = 0; r0 < fi; r0 += rows) {
        const size_t kc = fi - r0 < rows ? fi - r0 : rows;
        for (size_t r = 0; r < kc; r++)
            for (size_t o = 0; o < fo; o++) tmp[r * fo + o] = src[l->w_off + o * fi + r0 + r];
        const ft_status st = ft_quantize_q8(tmp, kc * fo, NULL, FT_ROUND_NEAREST, 0, q + c->L->wq[i] + r0 * fo / FT_QK);
        if (st != FT_OK) return st;
    }
    return ft_quantize_q8(src + l->b_off, fo, NULL, FT_ROUND_NEAREST, 0, q + c->L->bq[i]);
}

ft_status ft_train_load(const ft_net *net, const float *params, const float *global_params, float *arena) {
    layout_t L;
    if (!params || !arena || !make_layout(net, &L)) return FT_ERR_ARG;
    if ((net->flags & FT_TRAIN_PROX) && !global_params) return FT_ERR_ARG;
    ctx_t c = {net, &L, arena, (net->flags & FT_TRAIN_INT8) != 0, NULL, NULL, 0};
    for (int i = 0; i < net->n_layers; i++) {
        if (!has_params(&net->layers[i])) continue;
        ft_status st = load_tensor(&c, i, params, c.q8 ? NULL : arena + L.w);
        if (st != FT_OK) return st;
        if (net->flags & FT_TRAIN_PROX) load_tensor(&c, i, global_params, arena + L.g);
    }
    if (net->flags & FT_TRAIN_MOMENTUM) memset(arena + L.v, 0, (size_t)net->n_params * sizeof(float));
    return FT_OK;
}

/* Training layout -> interchange params; delta: params := trained - params (the caller's params
 * still hold the weights ft_train_load read), so a device gets its update without a second copy
 * of the model. The subtraction is float32, as numpy's params -= initial. */
static ft_status store(const ft_net *net, const float *arena, float *params, int delta) {
    layout_t L;
    if (!params || !arena || !make_layout(net, &L)) return FT_ERR_ARG;
    const int q8 = (net->flags & FT_TRAIN_INT8) != 0;
    float *tmp = (float *)arena + L.wscr; /* int8: scratch only, the weights are not touched */
    for (int i = 0; i < net->n_layers; i++) {
        const ft_layer *l = &net->layers[i];
        if (!has_params(l)) continue;
        const size_t fi = fan_in(l), fo = fan_out(l);
        float *pw = params + l->w_off, *pb = params + l->b_off;
        if (!q8 && !delta) {
            transpose(arena + L.w + l->w_off, fi, fo, pw);
            memcpy(pb, arena + L.w + l->b_off, fo * sizeof(float));
            continue;
        }
        if (!q8) {
            const float *wt = arena + L.w + l->w_off, *b = arena + L.w + l->b_off;
            for (size_t r = 0; r < fi; r++)
                for (size_t o = 0; o < fo; o++) pw[o * fi + r] = wt[r * fo + o] - pw[o * fi + r];
            for (size_t o = 0; o < fo; o++) pb[o] = b[o] - pb[o];
            continue;
        }
        const ft_block_q8 *q = (const ft_block_q8 *)(const void *)(arena + L.w);
        const size_t rows = l->kind == FT_LAYER_DENSE ? L.chunk_rows[i] : fi;
        for (size_t r0 = 0; r0 < fi; r0 += rows) {
            const size_t kc = fi - r0 < rows ? fi - r0 : rows;
            ft_dequantize_q8(q + L.wq[i] + r0 * fo / FT_QK, kc * fo, tmp);
            for (size_t r = 0; r < kc; r++)
                for (size_t o = 0; o < fo; o++) {
                    float *dst = &pw[o * fi + r0 + r];
                    *dst = delta ? tmp[r * fo + o] - *dst : tmp[r * fo + o];
                }
        }
        if (!delta) {
            ft_dequantize_q8(q + L.bq[i], fo, pb);
            continue;
        }
        ft_dequantize_q8(q + L.bq[i], fo, tmp);
        for (size_t o = 0; o < fo; o++) pb[o] = tmp[o] - pb[o];
    }
    return FT_OK;
}

ft_status ft_train_store(const ft_net *net, const float *arena, float *params) { return store(net, arena, params, 0); }

ft_status ft_train_store_delta(const ft_net *net, const float *arena, float *params) {
    return store(net, arena, params, 1);
}

/* The one SGD loop behind ft_train_sgd (float rows) and ft_train_sgd_u8 (uint8 rows scaled as
 * they are copied into the batch buffer): exactly one of x, xq is non-NULL. */
static ft_status sgd_loop(const ft_net *net, const ft_sgd_hyper *hyper, const float *x, const uint8_t *xq,
                          float x_scale, const int32_t *y, int64_t n_x, const int32_t *idx, int64_t n_idx,
                          int64_t max_steps, float *arena, double *loss_sum, int64_t *n_seen, int64_t *steps) {
    layout_t L;
    if (!hyper || (!x == !xq) || !y || !idx || !arena || !loss_sum || !n_seen || !steps || n_x < 1 || n_idx < 0 ||
        !make_layout(net, &L) || (net->flags & FT_NET_INFER))
        return FT_ERR_ARG;
    const size_t in_sz = act_size(&net->layers[0], 0), B = (size_t)net->batch;
    const int32_t C = (int32_t)net->layers[net->n_layers - 1].out_c;
    for (int64_t j = 0; j < n_idx; j++)
        if (idx[j] < 0 || idx[j] >= n_x || y[idx[j]] < 0 || y[idx[j]] >= C) return FT_ERR_ARG;
    ctx_t c = {net, &L, arena, (net->flags & FT_TRAIN_INT8) != 0, hyper, NULL, hyper->step0};
    float *x0 = arena + L.in_buf[0];
    int32_t *lab = (int32_t *)(void *)(arena + L.labels);
    *loss_sum = 0.0;
    *n_seen = 0;
    *steps = 0;
    for (int64_t j0 = 0; j0 < n_idx; j0 += (int64_t)B) {
        if (max_steps >= 0 && *steps >= max_steps) break;
        const size_t n = (size_t)(n_idx - j0) < B ? (size_t)(n_idx - j0) : B;
        for (size_t s = 0; s < n; s++) {
            const size_t row = (size_t)idx[j0 + (int64_t)s] * in_sz;
            if (x) {
                memcpy(x0 + s * in_sz, x + row, in_sz * sizeof(float));
            } else {
                for (size_t k = 0; k < in_sz; k++) x0[s * in_sz + k] = (float)xq[row + k] * x_scale;
            }
            lab[s] = y[idx[j0 + (int64_t)s]];
        }
        forward(&c, n);
        double loss;
        const ft_status st = backward(&c, n, lab, &loss);
        if (st != FT_OK) return st;
        *loss_sum += loss;
        *n_seen += (int64_t)n;
        *steps += 1;
        c.step++;
    }
    return FT_OK;
}

ft_status ft_train_sgd(const ft_net *net, const ft_sgd_hyper *hyper, const float *x, const int32_t *y,
                       int64_t n_x, const int32_t *idx, int64_t n_idx, int64_t max_steps, float *arena,
                       double *loss_sum, int64_t *n_seen, int64_t *steps) {
    if (!x) return FT_ERR_ARG;
    return sgd_loop(net, hyper, x, NULL, 0.0f, y, n_x, idx, n_idx, max_steps, arena, loss_sum, n_seen, steps);
}

ft_status ft_train_sgd_u8(const ft_net *net, const ft_sgd_hyper *hyper, const uint8_t *x, float x_scale,
                          const int32_t *y, int64_t n_x, const int32_t *idx, int64_t n_idx, int64_t max_steps,
                          float *arena, double *loss_sum, int64_t *n_seen, int64_t *steps) {
    if (!x || !(x_scale > 0.0f) || !isfinite(x_scale)) return FT_ERR_ARG;
    return sgd_loop(net, hyper, NULL, x, x_scale, y, n_x, idx, n_idx, max_steps, arena, loss_sum, n_seen, steps);
}

ft_status ft_train_grad(const ft_net *net, const float *x, const int32_t *y, int32_t n, float *arena,
                        float *grad, double *loss_sum) {
    layout_t L;
    if (!x || !y || !arena || !grad || !loss_sum || !make_layout(net, &L) || n < 1 || n > net->batch ||
        (net->flags & (FT_TRAIN_INT8 | FT_NET_INFER)))
        return FT_ERR_ARG;
    const int32_t C = (int32_t)net->layers[net->n_layers - 1].out_c;
    for (int32_t s = 0; s < n; s++)
        if (y[s] < 0 || y[s] >= C) return FT_ERR_ARG;
    ctx_t c = {net, &L, arena, 0, NULL, grad, 0};
    memcpy(arena + L.in_buf[0], x, (size_t)n * act_size(&net->layers[0], 0) * sizeof(float));
    forward(&c, (size_t)n);
    return backward(&c, (size_t)n, y, loss_sum);
}

ft_status ft_net_forward(const ft_net *net, const float *x, int32_t n, float *arena, float *logits) {
    layout_t L;
    if (!x || !arena || !logits || !make_layout(net, &L) || n < 1 || n > net->batch) return FT_ERR_ARG;
    ctx_t c = {net, &L, arena, (net->flags & FT_TRAIN_INT8) != 0, NULL, NULL, 0};
    memcpy(arena + L.in_buf[0], x, (size_t)n * act_size(&net->layers[0], 0) * sizeof(float));
    forward(&c, (size_t)n);
    const ft_layer *last = &net->layers[net->n_layers - 1];
    memcpy(logits, arena + L.out_buf[net->n_layers - 1], (size_t)n * (size_t)last->out_c * sizeof(float));
    return FT_OK;
}

ft_status ft_uniform_f32(float *out, size_t n, float lo, float hi, uint64_t seed, uint32_t counter0) {
    if ((!out && n) || n > UINT32_MAX) return FT_ERR_ARG;
    const uint32_t key = ft_rng_key(seed);
    for (size_t i = 0; i < n; i++) out[i] = lo + (hi - lo) * ft_rng_u01(counter0 + (uint32_t)i, key);
    return FT_OK;
}

ft_status ft_shuffle_i32(int32_t *out, size_t n, uint64_t seed, uint64_t stream) {
    if ((!out && n) || n > (size_t)INT32_MAX) return FT_ERR_ARG;
    const uint32_t key = ft_rng_key(seed ^ mix64(stream + 0x9E3779B97F4A7C15ULL));
    for (size_t i = 0; i < n; i++) out[i] = (int32_t)i;
    for (size_t i = n; i > 1; i--) {
        const size_t j = (size_t)(((uint64_t)ft_rng_bits((uint32_t)(i - 1), key) * (uint64_t)i) >> 32);
        const int32_t t = out[i - 1];
        out[i - 1] = out[j];
        out[j] = t;
    }
    return FT_OK;
}
