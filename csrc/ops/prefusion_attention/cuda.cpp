// lmini::prefusion_attention on CUDA tensors: the glue (glue.h) under the CUDA device policy.
// Built by the host compiler into lmini_kernels._C when the CUDA kernels are.
#include <torch/library.h>

#include "glue.h"
#include "lmini/cuda_device.h"

TORCH_LIBRARY_IMPL(lmini, CUDA, m) {
  m.impl("prefusion_attention", &lmini::prefusion_attention_glue<lmini::CudaDevice>);
}
