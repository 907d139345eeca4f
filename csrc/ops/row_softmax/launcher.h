// Plain-pointer launcher of row_softmax_kernel (kernel.cuh). Torch-free: launcher.cu is
// compiled by nvcc into lmini_kernels._C and by g++ (emu.cpp) into lmini_kernels._emu.
#pragma once

#include <cstdint>

#include "lmini/dtype.h"

namespace lmini::cuda {

// y[r, :] = softmax(scale * x[r, :]) for rows x cols, rows x_row_stride / y_row_stride
// elements apart. `stream` is a cudaStream_t (ignored by the host layer). Returns nullptr, or
// the CUDA error string of the launch.
const char* row_softmax(const void* x, void* y, DType dtype, int64_t rows, int64_t cols, int64_t x_row_stride,
                        int64_t y_row_stride, float scale, void* stream);

}  // namespace lmini::cuda
