// The element types of the CUDA launchers' plain-pointer interface. Torch-free: nvcc, the
// host SIMT build and the torch-facing glue all include it.
#pragma once

namespace lmini {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

}  // namespace lmini
