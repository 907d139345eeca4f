// CUDA registrations of the lmini ops: checks, output allocation, the current stream, then
// the torch-free launchers of csrc/cuda/*.cu. Compiled by the host compiler.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

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

at::Tensor prefusion_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                    bool causal, const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const char* op = "lmini::prefusion_attention (CUDA)";
  TORCH_CHECK(q_in.is_cuda() && k_in.is_cuda() && v_in.is_cuda(), op, ": q, k, v must be CUDA tensors");
  TORCH_CHECK(q_in.dim() == 4 && k_in.sizes() == v_in.sizes() && k_in.dim() == 4, op, ": q (B, Lq, Hq, d), k = v (B, Lk, Hkv, d)");
  TORCH_CHECK(q_in.size(0) == k_in.size(0) && q_in.size(3) == k_in.size(3), op, ": q and k disagree on B or d");
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(), op,
              ": q, k, v must share one dtype");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  at::Tensor pad;
  if (key_padding_mask.has_value()) {
    pad = key_padding_mask->contiguous();
    TORCH_CHECK(pad.scalar_type() == at::kBool && pad.is_cuda() && pad.dim() == 2 && pad.size(0) == q.size(0) &&
                    pad.size(1) == k.size(1),
                op, ": key_padding_mask must be a (B, Lk) bool CUDA tensor");
  }
  at::Tensor out = new_output(at::empty_like(q));
  check_launch(prefusion_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), pad.defined() ? pad.data_ptr() : nullptr,
                                   out.data_ptr(), dtype_of(q, "q"), q.size(0), q.size(1), k.size(1), q.size(2),
                                   k.size(2), q.size(3), causal, float(scale),
                                   c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmini, CUDA, m) { m.impl("row_softmax", &row_softmax_cuda);
  m.impl("prefusion_attention", &prefusion_attention_cuda); }

}  // namespace lmini::cuda
