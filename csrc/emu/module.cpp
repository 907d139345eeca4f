// lmini_kernels._emu: the CUDA kernels' launchers (csrc/cuda/*.cu) compiled for the host
// against the SIMT layer (csrc/emu/simt.h), callable from Python on CPU tensors' data
// pointers. Torch-free; used by the cuda backend when LMINI_CUDA_EMULATE=1, i.e. in tests.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "lmini/launchers.h"

namespace py = pybind11;

namespace {
void check(const char* err) {
  if (err != nullptr) throw std::runtime_error(err);
}
const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
}  // namespace

PYBIND11_MODULE(_emu, m) {
  m.doc() = "CUDA kernel bodies run on the CPU through the host SIMT layer (tests only).";
  m.def(
      "row_softmax",
      [](uintptr_t x, uintptr_t y, int dtype, int64_t rows, int64_t cols, int64_t sx, int64_t sy,
         float scale) {
        py::gil_scoped_release release;
        check(lmini::cuda::row_softmax(cptr(x), mptr(y), lmini::DType(dtype), rows, cols, sx, sy,
                                       scale, nullptr));
      },
      py::arg("x"), py::arg("y"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
      py::arg("x_row_stride"), py::arg("y_row_stride"), py::arg("scale"));
  m.def(
      "prefusion_attention",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t pad, int dtype, int64_t b, int64_t lq,
         int64_t lk, int64_t hq, int64_t hkv, int64_t d, bool causal, float scale) {
        py::gil_scoped_release release;
        check(lmini::cuda::prefusion_attention(cptr(q), cptr(k), cptr(v), pad ? cptr(pad) : nullptr, mptr(out),
                                               lmini::DType(dtype), b, lq, lk, hq, hkv, d, causal, scale,
                                               nullptr));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("key_padding_mask"), py::arg("dtype"),
      py::arg("batch"), py::arg("lq"), py::arg("lk"), py::arg("hq"), py::arg("hkv"), py::arg("d"),
      py::arg("causal"), py::arg("scale"));
  m.def(
      "compress_folded",
      [](uintptr_t x, uintptr_t a, uintptr_t p, uintptr_t acc, uintptr_t lse, uintptr_t part, int dtype,
         int64_t batch, int64_t n, int64_t dim, int64_t nk, int64_t sxb, int64_t sxn, float eps, int64_t splits) {
        py::gil_scoped_release release;
        check(lmini::cuda::compress_folded(cptr(x), static_cast<const float*>(cptr(a)),
                                           static_cast<const float*>(cptr(p)), static_cast<float*>(mptr(acc)),
                                           static_cast<float*>(mptr(lse)), static_cast<float*>(mptr(part)),
                                           lmini::DType(dtype), batch, n, dim, nk, sxb, sxn, eps, splits, nullptr));
      },
      py::arg("x"), py::arg("a"), py::arg("p"), py::arg("acc"), py::arg("lse"), py::arg("part"), py::arg("dtype"),
      py::arg("batch"), py::arg("n"), py::arg("dim"), py::arg("nk"), py::arg("x_batch_stride"),
      py::arg("x_token_stride"), py::arg("eps"), py::arg("splits"));
}
