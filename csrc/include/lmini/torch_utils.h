// Helpers for the torch-facing C++: the CPU kernels (ops/*/cpu.cpp) and the CUDA glue
// (ops/*/glue.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/fill.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "lmini/dtype.h"
#include "lmini/env.h"

namespace lmini {

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, name, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

// Tests set LMINI_POISON_OUTPUTS=1: every output is filled with NaN before the kernel runs,
// so an element the kernel forgets to write fails the comparison with the reference.
inline at::Tensor new_output(at::Tensor t) {
  if (t.is_floating_point() && env_flag("LMINI_POISON_OUTPUTS")) t.fill_(NAN);
  return t;
}

// The launchers return nullptr or an error message.
inline void check_launch(const char* err, const std::string& op) {
  TORCH_CHECK(err == nullptr, op, ": launch failed: ", err ? err : "");
}

// "<namespace>::<op> (<device>)", the name of an op in the messages of a CUDA glue
// (ops/*/glue.h) run under a device policy (lmini/cuda_device.h).
template <typename Device>
std::string op_label(const char* op) {
  return std::string(Device::kNamespace) + "::" + op + " (" + Device::kName + ")";
}

}  // namespace lmini
