// CUDA registrations of the lmini ops: checks, output allocation, the current stream, then
// the torch-free launchers of csrc/cuda/*.cu. Compiled by the host compiler.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <algorithm>
#include <tuple>

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

namespace {

std::tuple<at::Tensor, at::Tensor> compress_folded_cuda(const at::Tensor& x_in, const at::Tensor& a_in,
                                                        const at::Tensor& p_in, double eps, int64_t splits) {
  const char* op = "lmini::compress_folded (CUDA)";
  TORCH_CHECK(x_in.is_cuda() && a_in.is_cuda() && p_in.is_cuda(), op, ": x, a, p must be CUDA tensors");
  TORCH_CHECK(x_in.dim() == 3, op, ": x must be (B, N, D), got ", x_in.sizes());
  TORCH_CHECK(a_in.dim() == 2 && a_in.size(1) == x_in.size(2) && a_in.scalar_type() == at::kFloat, op,
              ": a must be float32 (K, D)");
  TORCH_CHECK(p_in.dim() == 2 && p_in.size(0) == a_in.size(0) && p_in.size(1) == x_in.size(1) &&
                  p_in.scalar_type() == at::kFloat,
              op, ": p must be float32 (K, N)");
  TORCH_CHECK(x_in.size(2) <= 2048, op, ": D <= 2048 (register accumulators), got ", x_in.size(2));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const at::Tensor a = a_in.contiguous(), p = p_in.contiguous();
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), nk = a.size(0);
  at::Tensor acc = new_output(at::empty({batch, nk, dim}, x.options().dtype(at::kFloat)));
  at::Tensor lse = new_output(at::empty({batch, nk}, x.options().dtype(at::kFloat)));
  if (batch == 0 || nk == 0) return {acc, lse};
  if (splits <= 0) {  // enough blocks for two waves over the SMs; a chunk keeps >= 64 tokens
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int64_t blocks = batch * ((nk + 7) / 8);
    splits = std::max<int64_t>(1, std::min<int64_t>((2 * sms + blocks - 1) / blocks, n / 64));
  }
  splits = std::min(splits, n);
  splits = (n + (n + splits - 1) / splits - 1) / ((n + splits - 1) / splits);  // no empty chunk
  at::Tensor part = splits > 1 ? at::empty({batch * splits, nk, dim + 2}, acc.options()) : acc;
  check_launch(compress_folded(x.data_ptr(), a.data_ptr<float>(), p.data_ptr<float>(), acc.data_ptr<float>(),
                               lse.data_ptr<float>(), part.data_ptr<float>(), dtype_of(x, "x"), batch, n, dim, nk,
                               x.stride(0), x.stride(1), float(eps), splits,
                               c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return {acc, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmini, CUDA, m) { m.impl("compress_folded", &compress_folded_cuda); }

}  // namespace lmini::cuda
