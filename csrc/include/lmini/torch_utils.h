// Helpers for the torch-facing C++ (CPU kernels and CUDA registrations).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "lmini/launchers.h"

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

}  // namespace lmini
