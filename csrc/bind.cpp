// bind.cpp — the one pybind11 binding of the C kernels (module fedtiny._core).
// Thin on purpose: check every array before any work (an in-place output must be exactly
// float32, C-contiguous, writable and of the right size — a converted copy would lose the
// write), take the raw pointers, release the GIL, call the kernel, turn a status into an error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

}  // namespace

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
        float *pr = nullptr;
        py::array r;
        if (!residual.is_none()) {
            r = residual.cast<py::array>();
            pr = f32_out(r, "residual", static_cast<ssize_t>(n));
        }
        if (!out.dtype().equal(py::dtype::of<uint8_t>()) || !(out.flags() & py::array::c_style) || !out.writeable() ||
            static_cast<size_t>(out.nbytes()) != ft_q8_nblocks(n) * sizeof(ft_block_q8))
            throw py::value_error("out must be a writable contiguous uint8 array of exactly nblocks*BLOCK_BYTES bytes");
        if (rounding != FT_ROUND_NEAREST && rounding != FT_ROUND_STOCHASTIC) throw py::value_error("unknown rounding mode");
        auto *po = static_cast<ft_block_q8 *>(out.mutable_data());
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
}
