// Torch-facing glue of the prefusion_attention CUDA kernel, written once for the CUDA
// registration (cuda.cpp) and the emulated one (emu.cpp): checks, contiguous inputs, the
// output, the launch. `Device` is a device policy (lmini/cuda_device.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <optional>

#include "launcher.h"
#include "lmini/torch_utils.h"

namespace lmini {

template <typename Device>
at::Tensor prefusion_attention_glue(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                    bool causal, const std::optional<at::Tensor>& key_padding_mask, double scale) {
  static const std::string op = op_label<Device>("prefusion_attention");
  TORCH_CHECK(Device::holds(q_in) && Device::holds(k_in) && Device::holds(v_in), op, ": q, k, v must be ",
              Device::kTensors, " tensors");
  TORCH_CHECK(q_in.dim() == 4 && k_in.sizes() == v_in.sizes() && k_in.dim() == 4, op,
              ": q (B, Lq, Hq, d), k = v (B, Lk, Hkv, d)");
  TORCH_CHECK(q_in.size(0) == k_in.size(0) && q_in.size(3) == k_in.size(3), op, ": q and k disagree on B or d");
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(), op,
              ": q, k, v must share one dtype");
  const typename Device::Guard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  at::Tensor pad;
  if (key_padding_mask.has_value()) {
    pad = key_padding_mask->contiguous();
    TORCH_CHECK(pad.scalar_type() == at::kBool && Device::holds(pad) && pad.dim() == 2 && pad.size(0) == q.size(0) &&
                    pad.size(1) == k.size(1),
                op, ": key_padding_mask must be a (B, Lk) bool ", Device::kTensors, " tensor");
  }
  at::Tensor out = new_output(at::empty_like(q));
  check_launch(cuda::prefusion_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                         pad.defined() ? pad.data_ptr() : nullptr, out.data_ptr(), dtype_of(q, "q"),
                                         q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), causal,
                                         float(scale), Device::stream()),
               op);
  return out;
}

}  // namespace lmini
