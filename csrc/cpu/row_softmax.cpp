// CPU implementation of lmini::row_softmax: y = softmax(scale * x) over the last dim.
// One row per OpenMP task (at::parallel_for), fp32 accumulation, the online-softmax math of
// lmini/math.h shared with the CUDA kernel. Two reads and one write of x: memory-bound.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "lmini/math.h"
#include "lmini/torch_utils.h"

namespace lmini::cpu {
namespace {

template <typename T>
void row_softmax_rows(const T* x, T* y, int64_t rows, int64_t cols, float scale) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      // Max first, then sum: two cheap passes vectorize better than the merged update.
      float m = -INFINITY;
      for (int64_t c = 0; c < cols; ++c) m = std::max(m, scale * static_cast<float>(xr[c]));
      SoftmaxState s{m, 0.0f};
      if (m != -INFINITY) {
        for (int64_t c = 0; c < cols; ++c) s.sum += std::exp(scale * static_cast<float>(xr[c]) - m);
      }
      const float inv = s.sum > 0.0f ? 1.0f / s.sum : 0.0f;
      for (int64_t c = 0; c < cols; ++c) {
        yr[c] = static_cast<T>(s.sum > 0.0f ? std::exp(scale * static_cast<float>(xr[c]) - m) * inv : 0.0f);
      }
    }
  });
}

at::Tensor row_softmax(const at::Tensor& x_in, double scale) {
  TORCH_CHECK(x_in.device().is_cpu(), "lmini::row_softmax (CPU): x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "lmini::row_softmax: x must have at least 1 dimension");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = new_output(at::empty_like(x));
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  switch (dtype_of(x, "x")) {
    case DType::f32:
      row_softmax_rows(x.data_ptr<float>(), y.data_ptr<float>(), rows, cols, float(scale));
      break;
    case DType::f16:
      row_softmax_rows(x.data_ptr<c10::Half>(), y.data_ptr<c10::Half>(), rows, cols, float(scale));
      break;
    case DType::bf16:
      row_softmax_rows(x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), rows, cols, float(scale));
      break;
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmini, CPU, m) { m.impl("row_softmax", &row_softmax); }

}  // namespace lmini::cpu
