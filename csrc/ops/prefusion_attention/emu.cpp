// lmini_emu::prefusion_attention: the CUDA launcher (launcher.cu) compiled by g++ against the
// host SIMT layer, behind the same glue (glue.h) as lmini::prefusion_attention on CUDA, on CPU
// tensors. Built into lmini_kernels._emu; the cuda backend runs it under LMINI_CUDA_EMULATE=1.
#include <torch/library.h>

#include "emu/device.h"
#include "glue.h"
#include "schema.h"
// After the torch headers: the SIMT layer redefines __shared__.
#include "launcher.cu"

TORCH_LIBRARY_FRAGMENT(lmini_emu, m) { m.def(lmini::kPrefusionAttentionSchema); }

TORCH_LIBRARY_IMPL(lmini_emu, CPU, m) {
  m.impl("prefusion_attention", &lmini::prefusion_attention_glue<lmini::EmulatedDevice>);
}
