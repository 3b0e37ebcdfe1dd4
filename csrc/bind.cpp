// bind.cpp — the one pybind11 binding of the C kernels (module fedtiny._core).
// Thin on purpose: check every array before any work (an in-place output must be exactly
// float32, C-contiguous, writable and of the right size — a converted copy would lose the
// write), take the raw pointers, release the GIL, call the kernel, turn a status into an error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "fedtiny.h"

namespace py = pybind11;

namespace {

void raise_status(ft_status st, const char *what) {
    switch (st) {
    case FT_OK: return;
    case FT_ERR_NONFINITE: throw py::value_error(std::string(what) + ": input holds NaN or Inf");
    case FT_ERR_ARG: throw py::value_error(std::string(what) + ": invalid argument");
    case FT_ERR_SIMD: throw py::value_error(std::string(what) + ": SIMD path not supported on this CPU");
    case FT_ERR_RNG: throw py::value_error(std::string(what) + ": the random byte source failed");
    default: throw std::runtime_error(std::string(what) + ": kernel failed with status " + std::to_string(st));
    }
}

// A float32 array the kernel reads: exact dtype, C-contiguous, 1-D.
const float *f32_in(const py::array &a, const char *name, ssize_t n = -1) {
    if (!a.dtype().equal(py::dtype::of<float>()))
        throw py::value_error(std::string(name) + " must be float32, got " + std::string(py::str(a.dtype())));
    if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) + "-D");
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    if (n >= 0 && a.size() != n)
        throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " + std::to_string(n));
    return static_cast<const float *>(a.data());
}

// A float32 array the kernel writes in place: the same checks, plus writable.
float *f32_out(py::array &a, const char *name, ssize_t n = -1) {
    f32_in(a, name, n);
    if (!a.writeable()) throw py::value_error(std::string(name) + " is read-only");
    return static_cast<float *>(a.mutable_data());
}

// Blocks an encoder writes: a writable, contiguous uint8 array of exactly `nbytes` bytes.
uint8_t *blocks_out(py::array &out, size_t nbytes, const char *layout) {
    if (!out.dtype().equal(py::dtype::of<uint8_t>()) || !(out.flags() & py::array::c_style) || !out.writeable() ||
        static_cast<size_t>(out.nbytes()) != nbytes)
        throw py::value_error(std::string("out must be a writable contiguous uint8 array of exactly ") + layout + " bytes");
    return static_cast<uint8_t *>(out.mutable_data());
}

// The optional error-feedback residual of the encoders: None, or float32 of the delta's length.
float *residual_out(const py::object &residual, py::array &keep, size_t n) {
    if (residual.is_none()) return nullptr;
    keep = residual.cast<py::array>();
    return f32_out(keep, "residual", static_cast<ssize_t>(n));
}

// Blocks of the int8 codec held in any contiguous byte buffer (bytes, memoryview, uint8 array).
struct Blocks {
    py::buffer_info info;
    const ft_block_q8 *ptr;
    size_t nbytes;
};
Blocks blocks_in(const py::buffer &b, size_t n_values, const char *name) {
    Blocks r{b.request(), nullptr, 0};
    if (r.info.itemsize != 1 || r.info.ndim != 1 || (r.info.ndim == 1 && r.info.strides[0] != 1))
        throw py::value_error(std::string(name) + " must be a contiguous byte buffer");
    r.nbytes = static_cast<size_t>(r.info.size);
    const size_t need = ft_q8_nblocks(n_values) * sizeof(ft_block_q8);
    if (r.nbytes < need)
        throw py::value_error(std::string(name) + " holds " + std::to_string(r.nbytes) + " bytes, " +
                              std::to_string(n_values) + " values need " + std::to_string(need));
    r.ptr = static_cast<const ft_block_q8 *>(r.info.ptr);
    return r;
}

ft_simd simd_by_name(const std::string &name) {
    for (int i = 0; i < FT_SIMD_COUNT; i++)
        if (name == ft_simd_name(static_cast<ft_simd>(i))) return static_cast<ft_simd>(i);
    throw py::value_error("unknown SIMD path '" + name + "' (known: scalar, avx2, avx512, neon)");
}


// ---- training engine helpers --------------------------------------------------------
// A model as fedtiny/model.py describes it: an (L, 14) int64 array of ft_layer rows.
ft_net net_from(const py::array &layers, int64_t n_params, int32_t batch, uint32_t flags) {
    if (!layers.dtype().equal(py::dtype::of<int64_t>()) || layers.ndim() != 2 || layers.shape(1) != 14 ||
        !(layers.flags() & py::array::c_style))
        throw py::value_error("layers must be a C-contiguous (L, 14) int64 array");
    ft_net net{static_cast<const ft_layer *>(layers.data()), static_cast<int32_t>(layers.shape(0)), n_params, batch,
               flags};
    if (layers.shape(0) > FT_MAX_LAYERS || ft_net_check(&net) != FT_OK)
        throw py::value_error("model description rejected: inconsistent layer shapes or parameter offsets, or batch " +
                              std::to_string(batch) + " times a layer's activation size exceeds 2^28 floats");
    return net;
}
float *arena_of(py::array &arena, const ft_net &net) {
    return f32_out(arena, "arena", static_cast<ssize_t>(ft_train_arena_floats(&net)));
}
const int32_t *i32_in(const py::array &a, const char *name, ssize_t n = -1) {
    if (!a.dtype().equal(py::dtype::of<int32_t>()) || a.ndim() != 1 || !(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be a C-contiguous 1-D int32 array");
    if (n >= 0 && a.size() != n)
        throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " + std::to_string(n));
    return static_cast<const int32_t *>(a.data());
}
// Samples as a C-contiguous float32 (N, row) array.
const float *rows_in(const py::array &a, const char *name, ssize_t row) {
    if (!a.dtype().equal(py::dtype::of<float>()) || a.ndim() != 2 || !(a.flags() & py::array::c_style) ||
        a.shape(1) != row)
        throw py::value_error(std::string(name) + " must be a C-contiguous float32 (N, " + std::to_string(row) + ") array");
    return static_cast<const float *>(a.data());
}
ssize_t input_size(const ft_net &net) {
    const ft_layer &l = net.layers[0];
    return static_cast<ssize_t>(l.in_h * l.in_w * l.in_c);
}


// ---- secure aggregation helpers ------------------------------------------------------
// A uint16 or uint32 vector (the modulus is its width): 1-D, C-contiguous, aligned; writable when
// the kernel writes it. Returns 16 or 32.
int uvec_bits(const py::array &a, const char *name, bool writable, ssize_t n = -1) {
    int bits = 0;
    if (a.dtype().equal(py::dtype::of<uint16_t>())) bits = 16;
    else if (a.dtype().equal(py::dtype::of<uint32_t>())) bits = 32;
    else throw py::value_error(std::string(name) + " must be uint16 (b = 16) or uint32 (b = 32), got " +
                               std::string(py::str(a.dtype())));
    if (a.ndim() != 1 || !(a.flags() & py::array::c_style) ||
        reinterpret_cast<uintptr_t>(a.data()) % static_cast<uintptr_t>(a.itemsize()) != 0)
        throw py::value_error(std::string(name) + " must be a 1-D, C-contiguous, aligned array");
    if (writable && !a.writeable()) throw py::value_error(std::string(name) + " is read-only");
    if (n >= 0 && a.size() != n)
        throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " + std::to_string(n));
    return bits;
}
// Exactly `len` bytes from a contiguous buffer (bytes, bytearray, memoryview, uint8 array).
struct Bytes {
    py::buffer_info info;
    const uint8_t *ptr;
    size_t len;
};
Bytes bytes_in(const py::buffer &b, const char *name, ssize_t len = -1) {
    Bytes r{b.request(), nullptr, 0};
    if (r.info.itemsize != 1 || (r.info.ndim >= 1 && r.info.strides.back() != 1) ||
        !(r.info.ndim <= 1 || py::array(b).flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be a contiguous byte buffer");
    r.len = static_cast<size_t>(r.info.size);
    if (len >= 0 && r.len != static_cast<size_t>(len))
        throw py::value_error(std::string(name) + " must be " + std::to_string(len) + " bytes, got " + std::to_string(r.len));
    r.ptr = static_cast<const uint8_t *>(r.info.ptr);
    return r;
}
// Masks: seeds (n * 32 bytes, back to back) and n signs (+1 add, -1 subtract).
struct Masks {
    Bytes seeds;
    py::array_t<int8_t> signs;
    size_t n;
};
Masks masks_in(const py::buffer &seeds, const py::object &signs) {
    Masks m{bytes_in(seeds, "seeds"), py::array_t<int8_t, py::array::c_style | py::array::forcecast>::ensure(signs), 0};
    if (!m.signs || m.signs.ndim() != 1) throw py::value_error("signs must be a 1-D sequence of +1/-1");
    if (m.seeds.len % FT_SECAGG_SEED_BYTES != 0)
        throw py::value_error("seeds must be a multiple of 32 bytes (one 32-byte seed per mask), got " +
                              std::to_string(m.seeds.len));
    m.n = m.seeds.len / FT_SECAGG_SEED_BYTES;
    if (static_cast<size_t>(m.signs.size()) != m.n)
        throw py::value_error(std::to_string(m.n) + " seeds but " + std::to_string(m.signs.size()) + " signs");
    for (size_t j = 0; j < m.n; j++)
        if (m.signs.data()[j] != 1 && m.signs.data()[j] != -1)
            throw py::value_error("sign " + std::to_string(j) + " is " + std::to_string(m.signs.data()[j]) +
                                  ": each sign is +1 (add the mask) or -1 (remove it)");
    return m;
}

}  // namespace

// The discrete Gaussian's byte source: a Python callable random_bytes(n) -> bytes (os.urandom in
// production), read 64 KiB at a time so the kernel runs without the GIL between refills.
struct PyByteSource {
    py::object fn;
    std::vector<uint8_t> buf;
    size_t pos = 0;
    std::string error;
    static constexpr size_t CHUNK = 65536;

    static int fill(void *ctx, uint8_t *out, size_t n) {
        auto *self = static_cast<PyByteSource *>(ctx);
        while (n > 0) {
            if (self->pos == self->buf.size() && self->refill() != 0) return -1;
            const size_t k = std::min(n, self->buf.size() - self->pos);
            std::memcpy(out, self->buf.data() + self->pos, k);
            self->pos += k;
            out += k;
            n -= k;
        }
        return 0;
    }

    int refill() {
        py::gil_scoped_acquire gil;
        try {
            py::object got = fn(CHUNK);
            if (!py::isinstance<py::bytes>(got)) {
                error = "random_bytes(n) must return bytes";
                return -1;
            }
            std::string bytes = got.cast<std::string>();
            if (bytes.size() != CHUNK) {
                error = "random_bytes(" + std::to_string(CHUNK) + ") returned " + std::to_string(bytes.size()) + " bytes";
                return -1;
            }
            buf.assign(bytes.begin(), bytes.end());
            pos = 0;
            return 0;
        } catch (py::error_already_set &e) {
            error = std::string("random_bytes raised: ") + e.what();
            return -1;
        }
    }
};

PYBIND11_MODULE(_core, m) {
    m.doc() = "fedtiny C kernels (see csrc/fedtiny.h)";
    m.attr("QK") = FT_QK;
    m.attr("BLOCK_BYTES") = static_cast<int>(sizeof(ft_block_q8));

    m.def("simd_info", [] { return std::string(ft_simd_name(ft_simd_get())); },
          "Name of the SIMD path the kernels use now.");
    m.def("simd_available", [] {
        std::vector<std::string> out;
        for (int i = 0; i < FT_SIMD_COUNT; i++)
            if (ft_simd_supported(static_cast<ft_simd>(i))) out.emplace_back(ft_simd_name(static_cast<ft_simd>(i)));
        return out;
    }, "SIMD paths this CPU and build can run.");
    m.def("set_simd", [](const std::string &name) {
        const ft_simd level = simd_by_name(name);
        if (ft_simd_set(level) != FT_OK)
            throw py::value_error("SIMD path '" + name + "' is not supported by this CPU (available: " +
                                  std::string(py::str(py::module_::import("fedtiny._core").attr("simd_available")())) + ")");
    }, py::arg("name"), "Select the SIMD path (scalar, avx2, avx512, neon).");

    m.def("quantize_q8", [](py::array x, py::object residual, int rounding, uint64_t seed, py::array out) {
        const float *px = f32_in(x, "delta");
        const size_t n = static_cast<size_t>(x.size());
        py::array r;
        float *pr = residual_out(residual, r, n);
        auto *po = reinterpret_cast<ft_block_q8 *>(blocks_out(out, ft_q8_nblocks(n) * sizeof(ft_block_q8), "nblocks*BLOCK_BYTES"));
        if (rounding != FT_ROUND_NEAREST && rounding != FT_ROUND_STOCHASTIC) throw py::value_error("unknown rounding mode");
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_quantize_q8(px, n, pr, static_cast<ft_rounding>(rounding), seed, po);
        }
        raise_status(st, "quantize");
    }, py::arg("x"), py::arg("residual"), py::arg("rounding"), py::arg("seed"), py::arg("out"));

    m.def("dequantize_q8", [](py::buffer blocks, size_t n, py::array out) {
        float *po = f32_out(out, "out", static_cast<ssize_t>(n));
        Blocks b = blocks_in(blocks, n, "blocks");
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_dequantize_q8(b.ptr, n, po);
        }
        raise_status(st, "dequantize");
    }, py::arg("blocks"), py::arg("n"), py::arg("out"));

    m.def("fedavg_acc_q8", [](py::array acc, size_t offset, py::buffer blocks, size_t n, float weight) {
        float *pa = f32_out(acc, "acc");
        if (offset > static_cast<size_t>(acc.size()) || n > static_cast<size_t>(acc.size()) - offset)
            throw py::value_error("chunk [" + std::to_string(offset) + ", " + std::to_string(offset + n) +
                                  ") exceeds the accumulator's " + std::to_string(acc.size()) + " values");
        Blocks b = blocks_in(blocks, n, "blocks");
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_fedavg_acc_q8(pa + offset, b.ptr, n, weight);
        }
        raise_status(st, "fedavg_acc_q8");
    }, py::arg("acc"), py::arg("offset"), py::arg("blocks"), py::arg("n"), py::arg("weight"));

    m.def("fedavg_acc_f32", [](py::array acc, py::array x, float weight) {
        float *pa = f32_out(acc, "acc");
        const float *px = f32_in(x, "update", acc.size());
        const size_t n = static_cast<size_t>(acc.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_fedavg_acc_f32(pa, px, n, weight);
        }
        raise_status(st, "fedavg_acc_f32");
    }, py::arg("acc"), py::arg("x"), py::arg("weight"));

    m.def("fedavg_apply_f32", [](py::array w, py::array acc, float scale) {
        float *pa = f32_out(acc, "acc");
        float *pw = f32_out(w, "global_weights", acc.size());
        const size_t n = static_cast<size_t>(acc.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_fedavg_apply_f32(pw, pa, n, scale);
        }
        raise_status(st, "fedavg_apply");
    }, py::arg("w"), py::arg("acc"), py::arg("scale"));

    // ---- update norm (csrc/norm_ref.c, csrc/arch/*_norm.c) -------------------------------
    // ---- sub-byte codecs: fmt is 4 (q4), 2 (q2) or 1 (r1, rotated 1-bit) ----
    m.attr("RK") = FT_RK;
    m.def("lowbit_block_bytes", [](int fmt) {
        const size_t b = ft_lowbit_block_bytes(static_cast<ft_lowbit_fmt>(fmt));
        if (!b) throw py::value_error("unknown sub-byte format " + std::to_string(fmt));
        return b;
    }, py::arg("fmt"));
    m.def("lowbit_block_values", [](int fmt) {
        if (!ft_lowbit_block_bytes(static_cast<ft_lowbit_fmt>(fmt))) throw py::value_error("unknown sub-byte format " + std::to_string(fmt));
        return ft_lowbit_block_values(static_cast<ft_lowbit_fmt>(fmt));
    }, py::arg("fmt"));
    m.def("quantize_lowbit", [](int fmt, py::array x, py::object residual, int rounding, uint64_t seed, py::array out) {
        const auto f = static_cast<ft_lowbit_fmt>(fmt);
        if (!ft_lowbit_block_bytes(f)) throw py::value_error("unknown sub-byte format " + std::to_string(fmt));
        const float *px = f32_in(x, "delta");
        const size_t n = static_cast<size_t>(x.size());
        py::array r;
        float *pr = residual_out(residual, r, n);
        uint8_t *po = blocks_out(out, ft_lowbit_nblocks(f, n) * ft_lowbit_block_bytes(f), "nblocks*block_bytes");
        if (rounding != FT_ROUND_NEAREST && rounding != FT_ROUND_STOCHASTIC) throw py::value_error("unknown rounding mode");
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_quantize_lowbit(f, px, n, pr, static_cast<ft_rounding>(rounding), seed, po);
        }
        raise_status(st, "quantize");
    }, py::arg("fmt"), py::arg("x"), py::arg("residual"), py::arg("rounding"), py::arg("seed"), py::arg("out"));
    auto lowbit_in = [](int fmt, const py::buffer &blocks, size_t n, py::buffer_info &info) {
        const auto f = static_cast<ft_lowbit_fmt>(fmt);
        if (!ft_lowbit_block_bytes(f)) throw py::value_error("unknown sub-byte format " + std::to_string(fmt));
        info = blocks.request();
        if (info.itemsize != 1 || info.ndim != 1 || info.strides[0] != 1)
            throw py::value_error("blocks must be a contiguous byte buffer");
        const size_t need = ft_lowbit_nblocks(f, n) * ft_lowbit_block_bytes(f);
        if (static_cast<size_t>(info.size) < need)
            throw py::value_error("blocks hold " + std::to_string(info.size) + " bytes, " + std::to_string(n) +
                                  " values need " + std::to_string(need));
        return static_cast<const uint8_t *>(info.ptr);
    };
    m.def("dequantize_lowbit", [lowbit_in](int fmt, py::buffer blocks, size_t n, uint64_t seed, py::array out) {
        float *po = f32_out(out, "out", static_cast<ssize_t>(n));
        py::buffer_info info;
        const uint8_t *pb = lowbit_in(fmt, blocks, n, info);
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_dequantize_lowbit(static_cast<ft_lowbit_fmt>(fmt), pb, n, seed, po);
        }
        raise_status(st, "dequantize");
    }, py::arg("fmt"), py::arg("blocks"), py::arg("n"), py::arg("seed"), py::arg("out"));
    m.def("fedavg_acc_lowbit", [lowbit_in](int fmt, py::array acc, size_t offset, py::buffer blocks, size_t n,
                                           uint64_t seed, float weight) {
        float *pa = f32_out(acc, "acc");
        if (offset > static_cast<size_t>(acc.size()) || n > static_cast<size_t>(acc.size()) - offset)
            throw py::value_error("chunk [" + std::to_string(offset) + ", " + std::to_string(offset + n) +
                                  ") exceeds the accumulator's " + std::to_string(acc.size()) + " values");
        py::buffer_info info;
        const uint8_t *pb = lowbit_in(fmt, blocks, n, info);
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_fedavg_acc_lowbit(static_cast<ft_lowbit_fmt>(fmt), pa + offset, pb, offset, n, seed, weight);
        }
        raise_status(st, "fedavg_acc_lowbit");
    }, py::arg("fmt"), py::arg("acc"), py::arg("offset"), py::arg("blocks"), py::arg("n"), py::arg("seed"),
       py::arg("weight"));
    m.def("fwht_f32", [](py::array v) {
        float *pv = f32_out(v, "v");
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_fwht_f32(pv, static_cast<size_t>(v.size()));
        }
        raise_status(st, "fwht_f32 (length must be a power of two <= RK)");
    }, py::arg("v"), "In-place unnormalized fast Walsh-Hadamard transform.");

    m.def("sumsq_q8", [](py::buffer blocks, size_t n) {
        if (n > UINT32_MAX) throw py::value_error("n must be < 2^32");
        Blocks b = blocks_in(blocks, n, "blocks");
        double out = 0.0;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_sumsq_q8(b.ptr, n, &out);
        }
        raise_status(st, "sumsq_q8");
        return out;
    }, py::arg("blocks"), py::arg("n"));
    m.def("sumsq_f32", [](py::array x) {
        const float *px = f32_in(x, "x");
        const size_t n = static_cast<size_t>(x.size());
        double out = 0.0;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_sumsq_f32(px, n, &out);
        }
        raise_status(st, "sumsq_f32");
        return out;
    }, py::arg("x"));

    // ---- training engine (csrc/train_net.c, csrc/gemm_ref.c) --------------------------
    m.attr("MAX_LAYERS") = FT_MAX_LAYERS;
    m.def("net_arena_floats", [](py::array layers, int64_t n_params, int32_t batch, uint32_t flags) {
        const ft_net net = net_from(layers, n_params, batch, flags);
        return ft_train_arena_floats(&net);
    }, py::arg("layers"), py::arg("n_params"), py::arg("batch"), py::arg("flags"));

    m.def("train_load", [](py::array layers, int64_t n_params, int32_t batch, uint32_t flags, py::array params,
                           py::object global_params, py::array arena) {
        const ft_net net = net_from(layers, n_params, batch, flags);
        const float *pp = f32_in(params, "params", n_params);
        const float *pg = nullptr;
        py::array g;
        if (!global_params.is_none()) {
            g = global_params.cast<py::array>();
            pg = f32_in(g, "global_params", n_params);
        }
        float *pa = arena_of(arena, net);
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_train_load(&net, pp, pg, pa);
        }
        raise_status(st, "train_load");
    }, py::arg("layers"), py::arg("n_params"), py::arg("batch"), py::arg("flags"), py::arg("params"),
       py::arg("global_params"), py::arg("arena"));

    m.def("train_store", [](py::array layers, int64_t n_params, int32_t batch, uint32_t flags, py::array arena,
                            py::array params, bool delta) {
        const ft_net net = net_from(layers, n_params, batch, flags);
        float *pp = f32_out(params, "params", n_params);
        float *pa = arena_of(arena, net);
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = delta ? ft_train_store_delta(&net, pa, pp) : ft_train_store(&net, pa, pp);
        }
        raise_status(st, "train_store");
    }, py::arg("layers"), py::arg("n_params"), py::arg("batch"), py::arg("flags"), py::arg("arena"),
       py::arg("params"), py::arg("delta") = false);

    m.def("train_sgd", [](py::array layers, int64_t n_params, int32_t batch, uint32_t flags, float lr, float momentum,
                          float weight_decay, float prox_mu, uint64_t seed, uint64_t step0, py::array x, py::array y,
                          py::array idx, int64_t max_steps, py::array arena) {
        const ft_net net = net_from(layers, n_params, batch, flags);
        const float *px = rows_in(x, "x", input_size(net));
        const int32_t *py_ = i32_in(y, "y", x.shape(0));
        const int32_t *pi = i32_in(idx, "idx");
        float *pa = arena_of(arena, net);
        const ft_sgd_hyper h{lr, momentum, weight_decay, prox_mu, seed, step0};
        double loss = 0.0;
        int64_t seen = 0, steps = 0;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_train_sgd(&net, &h, px, py_, x.shape(0), pi, idx.size(), max_steps, pa, &loss, &seen, &steps);
        }
        if (st == FT_ERR_NONFINITE)
            throw py::value_error("training diverged: the loss became NaN or Inf (lower the learning rate)");
        raise_status(st, "train_sgd");
        return py::make_tuple(loss, seen, steps);
    }, py::arg("layers"), py::arg("n_params"), py::arg("batch"), py::arg("flags"), py::arg("lr"), py::arg("momentum"),
       py::arg("weight_decay"), py::arg("prox_mu"), py::arg("seed"), py::arg("step0"), py::arg("x"), py::arg("y"),
       py::arg("idx"), py::arg("max_steps"), py::arg("arena"));

    m.def("train_grad", [](py::array layers, int64_t n_params, int32_t batch, uint32_t flags, py::array x, py::array y,
                           py::array arena, py::array grad) {
        const ft_net net = net_from(layers, n_params, batch, flags);
        const float *px = rows_in(x, "x", input_size(net));
        const int32_t *py_ = i32_in(y, "y", x.shape(0));
        float *pa = arena_of(arena, net);
        float *pg = f32_out(grad, "grad", n_params);
        double loss = 0.0;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_train_grad(&net, px, py_, static_cast<int32_t>(x.shape(0)), pa, pg, &loss);
        }
        raise_status(st, "train_grad");
        return loss;
    }, py::arg("layers"), py::arg("n_params"), py::arg("batch"), py::arg("flags"), py::arg("x"), py::arg("y"),
       py::arg("arena"), py::arg("grad"));

    m.def("net_forward", [](py::array layers, int64_t n_params, int32_t batch, uint32_t flags, py::array x,
                            py::array arena, py::array logits) {
        const ft_net net = net_from(layers, n_params, batch, flags);
        const float *px = rows_in(x, "x", input_size(net));
        const ssize_t C = static_cast<ssize_t>(net.layers[net.n_layers - 1].out_c);
        float *pl = f32_out(logits, "logits", x.shape(0) * C);
        float *pa = arena_of(arena, net);
        const ssize_t N = x.shape(0), row = input_size(net);
        ft_status st = FT_OK;
        {
            py::gil_scoped_release nogil;
            for (ssize_t j0 = 0; j0 < N && st == FT_OK; j0 += batch) {
                const int32_t n = static_cast<int32_t>(N - j0 < batch ? N - j0 : batch);
                st = ft_net_forward(&net, px + j0 * row, n, pa, pl + j0 * C);
            }
        }
        raise_status(st, "net_forward");
    }, py::arg("layers"), py::arg("n_params"), py::arg("batch"), py::arg("flags"), py::arg("x"), py::arg("arena"),
       py::arg("logits"));

    m.def("uniform_f32", [](py::array out, float lo, float hi, uint64_t seed, uint32_t counter0) {
        float *po = f32_out(out, "out");
        raise_status(ft_uniform_f32(po, static_cast<size_t>(out.size()), lo, hi, seed, counter0), "uniform_f32");
    }, py::arg("out"), py::arg("lo"), py::arg("hi"), py::arg("seed"), py::arg("counter0"));

    m.def("dgauss_s64", [](py::array out, uint64_t sigma2_num, uint64_t sigma2_den, py::object random_bytes) {
        if (!out.dtype().equal(py::dtype::of<int64_t>()) || out.ndim() != 1 || !(out.flags() & py::array::c_style) ||
            !out.writeable())
            throw py::value_error("out must be a writable C-contiguous 1-D int64 array");
        if (sigma2_num == 0 || sigma2_den == 0 || sigma2_num > FT_DGAUSS_MAX_NUM || sigma2_den > FT_DGAUSS_MAX_DEN)
            throw py::value_error("sigma^2 = num / den needs num in [1, 2^40] and den in [1, 2^24], got " +
                                  std::to_string(sigma2_num) + " / " + std::to_string(sigma2_den));
        if (!PyCallable_Check(random_bytes.ptr())) throw py::value_error("random_bytes must be callable: n -> bytes");
        PyByteSource src{random_bytes, {}, 0, {}};
        auto *po = static_cast<int64_t *>(out.mutable_data());
        const size_t n = static_cast<size_t>(out.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_dgauss_s64(po, n, sigma2_num, sigma2_den, &PyByteSource::fill, &src);
        }
        if (st == FT_ERR_RNG && !src.error.empty()) throw py::value_error("dgauss: " + src.error);
        raise_status(st, "dgauss");
    }, py::arg("out"), py::arg("sigma2_num"), py::arg("sigma2_den"), py::arg("random_bytes"),
       "n draws of the exact discrete Gaussian N_Z(0, num/den) from the byte source random_bytes(n) -> bytes");

    m.def("shuffle_i32", [](py::array out, uint64_t seed, uint64_t stream) {
        if (!out.dtype().equal(py::dtype::of<int32_t>()) || out.ndim() != 1 || !(out.flags() & py::array::c_style) ||
            !out.writeable())
            throw py::value_error("out must be a writable C-contiguous 1-D int32 array");
        auto *po = static_cast<int32_t *>(out.mutable_data());
        const size_t n = static_cast<size_t>(out.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_shuffle_i32(po, n, seed, stream);
        }
        raise_status(st, "shuffle_i32");
    }, py::arg("out"), py::arg("seed"), py::arg("stream"));

    m.def("gemm_f32", [](size_t M, size_t N, size_t K, py::array a, ssize_t rsa, ssize_t csa, py::array b, size_t ldb,
                         py::array c, size_t ldc, bool accumulate, bool reference) {
        const float *pa = f32_in(a, "a");
        const float *pb = f32_in(b, "b");
        float *pc = f32_out(c, "c");
        // bounds of every element the kernel touches, so a bad call is an error, not a crash
        if (M && N && K) {
            const ssize_t lo = std::min<ssize_t>(0, static_cast<ssize_t>(M - 1) * rsa) + std::min<ssize_t>(0, static_cast<ssize_t>(K - 1) * csa);
            const ssize_t hi = std::max<ssize_t>(0, static_cast<ssize_t>(M - 1) * rsa) + std::max<ssize_t>(0, static_cast<ssize_t>(K - 1) * csa);
            if (lo < 0 || hi >= a.size()) throw py::value_error("a is too small for M, K and its strides");
            if ((K - 1) * ldb + N > static_cast<size_t>(b.size())) throw py::value_error("b is too small for K, N, ldb");
        }
        if (M && N && (M - 1) * ldc + N > static_cast<size_t>(c.size())) throw py::value_error("c is too small for M, N, ldc");
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = reference ? ft_gemm_f32_ref(M, N, K, pa, rsa, csa, pb, ldb, pc, ldc, accumulate)
                           : ft_gemm_f32(M, N, K, pa, rsa, csa, pb, ldb, pc, ldc, accumulate);
        }
        raise_status(st, "gemm_f32");
    }, py::arg("M"), py::arg("N"), py::arg("K"), py::arg("a"), py::arg("rsa"), py::arg("csa"), py::arg("b"),
       py::arg("ldb"), py::arg("c"), py::arg("ldc"), py::arg("accumulate"), py::arg("reference") = false);
    // ---- secure aggregation (csrc/secagg.c; docs/secagg.md) ------------------------------
    m.attr("SECAGG_SEED_BYTES") = FT_SECAGG_SEED_BYTES;
    m.attr("SECAGG_MASK_NONCE") = py::bytes(FT_SECAGG_MASK_NONCE, 12);
    m.attr("SECAGG_ROUND_NONCE") = py::bytes(FT_SECAGG_ROUND_NONCE, 12);
    m.attr("SECAGG_MAX_QMAX") = FT_SECAGG_MAX_QMAX;

    m.def("l2norm_f32", [](py::array x) {
        const float *px = f32_in(x, "x");
        double norm = 0.0;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = ft_l2norm_f32(px, static_cast<size_t>(x.size()), &norm);
        }
        raise_status(st, "l2norm_f32");
        return norm;
    }, py::arg("x"), "sqrt(sum x^2) with float64 accumulation (the same bits on every SIMD path).");

    m.def("chacha20_stream", [](py::buffer key, py::buffer nonce, uint32_t counter0, py::array out, bool reference) {
        Bytes k = bytes_in(key, "key", 32), nn = bytes_in(nonce, "nonce", 12);
        if (!out.dtype().equal(py::dtype::of<uint8_t>()) || out.ndim() != 1 || !(out.flags() & py::array::c_style) ||
            !out.writeable() || out.size() % 64 != 0)
            throw py::value_error("out must be a writable contiguous uint8 array of a multiple of 64 bytes");
        auto *po = static_cast<uint8_t *>(out.mutable_data());
        const size_t nblocks = static_cast<size_t>(out.size()) / 64;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = reference ? ft_chacha20_stream_ref(k.ptr, nn.ptr, counter0, nblocks, po)
                           : ft_chacha20_stream(k.ptr, nn.ptr, counter0, nblocks, po);
        }
        if (st == FT_ERR_ARG) throw py::value_error("chacha20_stream: counter0 + blocks exceeds 2^32");
        raise_status(st, "chacha20_stream");
    }, py::arg("key"), py::arg("nonce"), py::arg("counter0"), py::arg("out"), py::arg("reference") = false);

    m.def("secagg_encode", [](py::array x, size_t offset, float scale, float step, uint32_t qmax, py::buffer round_key,
                              py::buffer seeds, py::object signs, py::array out, bool reference) {
        const float *px = f32_in(x, "delta");
        const size_t n = static_cast<size_t>(x.size());
        const int bits = uvec_bits(out, "out", true, static_cast<ssize_t>(n));
        Bytes rk = bytes_in(round_key, "round_key", 32);
        Masks mk = masks_in(seeds, signs);
        const uint32_t qlimit = bits == 16 ? 32767u : FT_SECAGG_MAX_QMAX;
        if (qmax < 1 || qmax > qlimit)
            throw py::value_error("qmax " + std::to_string(qmax) + " is out of range: 1 .. " + std::to_string(qlimit) +
                                  " for b = " + std::to_string(bits));
        if (!(step > 0.0f) || !std::isfinite(step) || !(scale >= 0.0f) || !std::isfinite(scale) ||
            !std::isfinite(scale / step))
            throw py::value_error("secagg_encode: step must be finite and > 0, scale finite and >= 0 (got step " +
                                  std::to_string(step) + ", scale " + std::to_string(scale) + ")");
        const uint8_t *ps = mk.n ? mk.seeds.ptr : nullptr;
        const int8_t *pg = mk.n ? mk.signs.data() : nullptr;
        ft_status st;
        {
            py::gil_scoped_release nogil;
            if (bits == 16) {
                auto *po = static_cast<uint16_t *>(out.mutable_data());
                st = reference ? ft_secagg_encode_u16_ref(px, n, offset, scale, step, qmax, rk.ptr, ps, pg, mk.n, po)
                               : ft_secagg_encode_u16(px, n, offset, scale, step, qmax, rk.ptr, ps, pg, mk.n, po);
            } else {
                auto *po = static_cast<uint32_t *>(out.mutable_data());
                st = reference ? ft_secagg_encode_u32_ref(px, n, offset, scale, step, qmax, rk.ptr, ps, pg, mk.n, po)
                               : ft_secagg_encode_u32(px, n, offset, scale, step, qmax, rk.ptr, ps, pg, mk.n, po);
            }
        }
        if (st == FT_ERR_ARG) throw py::value_error("secagg_encode: offset + n exceeds the stream (2^36 elements)");
        raise_status(st, "secagg_encode");
    }, py::arg("x"), py::arg("offset"), py::arg("scale"), py::arg("step"), py::arg("qmax"), py::arg("round_key"),
       py::arg("seeds"), py::arg("signs"), py::arg("out"), py::arg("reference") = false);

    m.def("secagg_add", [](py::array acc, py::array x, unsigned mod_bits) {
        const int width = uvec_bits(acc, "acc", true);
        if (uvec_bits(x, "x", false, acc.size()) != width)
            throw py::value_error("acc and x must have the same dtype (uint16 or uint32)");
        const unsigned b = mod_bits ? mod_bits : static_cast<unsigned>(width);
        if (b < 2 || b > static_cast<unsigned>(width))
            throw py::value_error("secagg_add: bits must be in 2.." + std::to_string(width) + " for " +
                                  std::to_string(width) + "-bit elements, got " + std::to_string(b));
        const size_t n = static_cast<size_t>(acc.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = width == 16 ? ft_secagg_add_mod_u16(static_cast<uint16_t *>(acc.mutable_data()),
                                                     static_cast<const uint16_t *>(x.data()), n, b)
                             : ft_secagg_add_mod_u32(static_cast<uint32_t *>(acc.mutable_data()),
                                                     static_cast<const uint32_t *>(x.data()), n, b);
        }
        raise_status(st, "secagg_add");
    }, py::arg("acc"), py::arg("x"), py::arg("bits") = 0,
       "acc = (acc + x) modulo 2^bits, in place (bits 0: the element width).");

    m.def("secagg_mask", [](py::array v, size_t offset, py::buffer seeds, py::object signs, bool reference) {
        const int bits = uvec_bits(v, "v", true);
        Masks mk = masks_in(seeds, signs);
        const uint8_t *ps = mk.n ? mk.seeds.ptr : nullptr;
        const int8_t *pg = mk.n ? mk.signs.data() : nullptr;
        const size_t n = static_cast<size_t>(v.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            if (bits == 16) {
                auto *pv = static_cast<uint16_t *>(v.mutable_data());
                st = reference ? ft_secagg_mask_u16_ref(pv, n, offset, ps, pg, mk.n) : ft_secagg_mask_u16(pv, n, offset, ps, pg, mk.n);
            } else {
                auto *pv = static_cast<uint32_t *>(v.mutable_data());
                st = reference ? ft_secagg_mask_u32_ref(pv, n, offset, ps, pg, mk.n) : ft_secagg_mask_u32(pv, n, offset, ps, pg, mk.n);
            }
        }
        if (st == FT_ERR_ARG) throw py::value_error("secagg_mask: offset + n exceeds the stream");
        raise_status(st, "secagg_mask");
    }, py::arg("v"), py::arg("offset"), py::arg("seeds"), py::arg("signs"), py::arg("reference") = false,
       "v += sum_j sign_j * mask(seed_j) modulo 2^b, in place.");

    m.def("secagg_decode", [](py::array sum, double scale, py::array out, unsigned mod_bits) {
        const int width = uvec_bits(sum, "sum", false);
        float *po = f32_out(out, "out", sum.size());
        if (!std::isfinite(scale)) throw py::value_error("secagg_decode: scale must be finite");
        const unsigned b = mod_bits ? mod_bits : static_cast<unsigned>(width);
        if (b < 2 || b > static_cast<unsigned>(width))
            throw py::value_error("secagg_decode: bits must be in 2.." + std::to_string(width) + " for " +
                                  std::to_string(width) + "-bit elements, got " + std::to_string(b));
        const size_t n = static_cast<size_t>(sum.size());
        ft_status st;
        {
            py::gil_scoped_release nogil;
            st = width == 16 ? ft_secagg_decode_mod_u16(static_cast<const uint16_t *>(sum.data()), n, b, scale, po)
                             : ft_secagg_decode_mod_u32(static_cast<const uint32_t *>(sum.data()), n, b, scale, po);
        }
        raise_status(st, "secagg_decode");
    }, py::arg("sum"), py::arg("scale"), py::arg("out"), py::arg("bits") = 0,
       "out = centered(sum mod 2^bits) * scale as float32 (bits 0: the element width).");
}
