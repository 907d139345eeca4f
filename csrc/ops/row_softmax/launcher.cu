// Launcher of lmini::row_softmax_kernel (kernel.cuh); see launcher.h.
#include "kernel.cuh"
#include "launcher.h"

namespace lmini::cuda {

const char* row_softmax(const void* x, void* y, DType dtype, int64_t rows, int64_t cols,
                        int64_t x_row_stride, int64_t y_row_stride, float scale, void* stream) {
  if (const char* e = grid_error(row_softmax_grid(rows))) return e;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32:
      launch_row_softmax(static_cast<const float*>(x), static_cast<float*>(y), rows, cols,
                         x_row_stride, y_row_stride, scale, s);
      break;
    case DType::f16:
      launch_row_softmax(static_cast<const __half*>(x), static_cast<__half*>(y), rows, cols,
                         x_row_stride, y_row_stride, scale, s);
      break;
    case DType::bf16:
      launch_row_softmax(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), rows,
                         cols, x_row_stride, y_row_stride, scale, s);
      break;
  }
  return last_launch_error();
}

}  // namespace lmini::cuda
