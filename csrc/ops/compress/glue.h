// Torch-facing glue of the compress_folded CUDA kernel, written once for the CUDA registration
// (cuda.cpp) and the emulated one (emu.cpp): checks, outputs, the split choice, the launch.
// `Device` is a device policy (lmini/cuda_device.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "launcher.h"
#include "lmini/torch_utils.h"

namespace lmini {

template <typename Device>
std::tuple<at::Tensor, at::Tensor> compress_folded_glue(const at::Tensor& x_in, const at::Tensor& a_in,
                                                        const at::Tensor& p_in, double eps, int64_t splits,
                                                        const std::optional<at::Tensor>& pidx_in,
                                                        const std::optional<at::Tensor>& lengths_in, bool normalize) {
  static const std::string op = op_label<Device>("compress_folded");
  TORCH_CHECK(Device::holds(x_in) && Device::holds(a_in) && Device::holds(p_in), op, ": x, a, p must be ",
              Device::kTensors, " tensors");
  TORCH_CHECK(x_in.dim() == 3, op, ": x must be (B, N, D), got ", x_in.sizes());
  TORCH_CHECK(a_in.dim() == 2 && a_in.size(1) == x_in.size(2) && a_in.scalar_type() == at::kFloat, op,
              ": a must be float32 (K, D)");
  const bool has_pidx = pidx_in.has_value() && pidx_in->defined();
  const bool has_lengths = lengths_in.has_value() && lengths_in->defined();
  TORCH_CHECK(p_in.dim() == 2 && p_in.size(0) == a_in.size(0) && p_in.scalar_type() == at::kFloat &&
                  (has_pidx ? p_in.size(1) >= 1 : p_in.size(1) == x_in.size(1)),
              op, ": p must be float32 (K, N) (or (K, T), T >= 1, with pidx), got ", p_in.sizes());
  // Shapes, dtypes and devices only: checking the values would synchronise with the GPU. The
  // kernel clamps them into range (never an out-of-bounds read); the Python API checks them.
  if (has_pidx) {
    TORCH_CHECK(Device::holds(*pidx_in) && pidx_in->scalar_type() == at::kInt && pidx_in->dim() == 2 &&
                    pidx_in->size(0) == x_in.size(0) && pidx_in->size(1) == x_in.size(1),
                op, ": pidx must be an int32 ", Device::kTensors, " tensor (B, N), got ", pidx_in->scalar_type(), " ",
                pidx_in->sizes());
  }
  if (has_lengths) {
    TORCH_CHECK(Device::holds(*lengths_in) && lengths_in->scalar_type() == at::kInt && lengths_in->dim() == 1 &&
                    lengths_in->size(0) == x_in.size(0),
                op, ": lengths must be an int32 ", Device::kTensors, " tensor (B,), got ", lengths_in->scalar_type(),
                " ", lengths_in->sizes());
  }
  TORCH_CHECK(x_in.size(2) <= 2048, op, ": D <= 2048 (register accumulators), got ", x_in.size(2));
  const typename Device::Guard guard(x_in.device());
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const at::Tensor a = a_in.contiguous(), p = p_in.contiguous();
  const at::Tensor pidx = has_pidx ? pidx_in->contiguous() : at::Tensor();
  const at::Tensor lengths = has_lengths ? lengths_in->contiguous() : at::Tensor();
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), nk = a.size(0);
  at::Tensor acc = new_output(at::empty({batch, nk, dim}, x.options().dtype(at::kFloat)));
  at::Tensor lse = new_output(at::empty({batch, nk}, x.options().dtype(at::kFloat)));
  if (batch == 0 || nk == 0) return {acc, lse};
  if (splits <= 0) {  // enough blocks for two waves over the SMs; a chunk keeps >= 64 tokens
    const int64_t sms = Device::sm_count();
    const int64_t blocks = batch * ((nk + 7) / 8);
    splits = std::max<int64_t>(1, std::min<int64_t>((2 * sms + blocks - 1) / blocks, n / 64));
  }
  splits = std::min(splits, n);
  splits = (n + (n + splits - 1) / splits - 1) / ((n + splits - 1) / splits);  // no empty chunk (before lengths)
  at::Tensor part = splits > 1 ? at::empty({batch * splits, nk, dim + 2}, acc.options()) : acc;
  check_launch(cuda::compress_folded(x.data_ptr(), a.data_ptr<float>(), p.data_ptr<float>(),
                                     has_pidx ? pidx.data_ptr<int32_t>() : nullptr,
                                     has_lengths ? lengths.data_ptr<int32_t>() : nullptr, acc.data_ptr<float>(),
                                     lse.data_ptr<float>(), part.data_ptr<float>(), dtype_of(x, "x"), batch, n, dim,
                                     nk, p.size(1), x.stride(0), x.stride(1), float(eps), normalize, splits,
                                     Device::stream()),
               op);
  return {acc, lse};
}

}  // namespace lmini
