// CUDA registrations of the lmini ops: checks, output allocation, the current stream, then
// the torch-free launchers of csrc/cuda/*.cu. Compiled by the host compiler.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lmini/launchers.h"
#include "lmini/torch_utils.h"

namespace lmini::cuda {
namespace {

void check_launch(const char* err, const char* op) {
  TORCH_CHECK(err == nullptr, op, ": CUDA launch failed: ", err ? err : "");
}

at::Tensor row_softmax_cuda(const at::Tensor& x_in, double scale) {
  TORCH_CHECK(x_in.is_cuda(), "lmini::row_softmax (CUDA): x must be a CUDA tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "lmini::row_softmax: x must have at least 1 dimension");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = new_output(at::empty_like(x));
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  TORCH_CHECK(rows < (int64_t(1) << 31), "lmini::row_softmax (CUDA): at most 2^31-1 rows, got ", rows);
  check_launch(row_softmax(x.data_ptr(), y.data_ptr(), dtype_of(x, "x"), rows, cols, cols, cols,
                           float(scale), c10::cuda::getCurrentCUDAStream().stream()),
               "lmini::row_softmax");
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmini, CUDA, m) { m.impl("row_softmax", &row_softmax_cuda); }

}  // namespace lmini::cuda
