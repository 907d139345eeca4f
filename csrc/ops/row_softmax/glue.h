// Torch-facing glue of the row_softmax CUDA kernel, written once for the CUDA registration
// (cuda.cpp) and the emulated one (emu.cpp): checks, contiguous input, the output, the launch.
// `Device` is a device policy (lmini/cuda_device.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "launcher.h"
#include "lmini/torch_utils.h"

namespace lmini {

template <typename Device>
at::Tensor row_softmax_glue(const at::Tensor& x_in, double scale) {
  static const std::string op = op_label<Device>("row_softmax");
  TORCH_CHECK(Device::holds(x_in), op, ": x must be a ", Device::kTensors, " tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, op, ": x must have at least 1 dimension");
  const typename Device::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = new_output(at::empty_like(x));
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  TORCH_CHECK(rows < (int64_t(1) << 31), op, ": at most 2^31-1 rows (one block each), got ", rows);
  check_launch(cuda::row_softmax(x.data_ptr(), y.data_ptr(), dtype_of(x, "x"), rows, cols, cols, cols, float(scale),
                                 Device::stream()),
               op);
  return y;
}

}  // namespace lmini
