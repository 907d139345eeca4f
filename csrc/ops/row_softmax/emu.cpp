// lmini_emu::row_softmax: the CUDA launcher (launcher.cu) compiled by g++ against the host SIMT
// layer, behind the same glue (glue.h) as lmini::row_softmax on CUDA, on CPU tensors. Built into
// lmini_kernels._emu; the cuda backend runs it under LMINI_CUDA_EMULATE=1 (tests).
#include <torch/library.h>

#include "emu/device.h"
#include "glue.h"
#include "schema.h"
// After the torch headers: the SIMT layer redefines __shared__.
#include "launcher.cu"

TORCH_LIBRARY_FRAGMENT(lmini_emu, m) { m.def(lmini::kRowSoftmaxSchema); }

TORCH_LIBRARY_IMPL(lmini_emu, CPU, m) { m.impl("row_softmax", &lmini::row_softmax_glue<lmini::EmulatedDevice>); }
