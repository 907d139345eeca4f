// lmini_emu::compress_folded: the CUDA launcher (launcher.cu) compiled by g++ against the host
// SIMT layer, behind the same glue (glue.h) as lmini::compress_folded on CUDA, on CPU tensors.
// Built into lmini_kernels._emu; the cuda backend runs it under LMINI_CUDA_EMULATE=1 (tests).
#include <torch/library.h>

#include "emu/device.h"
#include "glue.h"
#include "schema.h"
// After the torch headers: the SIMT layer redefines __shared__.
#include "launcher.cu"

TORCH_LIBRARY_FRAGMENT(lmini_emu, m) { m.def(lmini::kCompressFoldedSchema); }

TORCH_LIBRARY_IMPL(lmini_emu, CPU, m) {
  m.impl("compress_folded", &lmini::compress_folded_glue<lmini::EmulatedDevice>);
}
