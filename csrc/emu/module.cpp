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
}
