// lmini_kernels._emu as a Python module: importing it loads the emulated CUDA ops
// lmini_emu::<op> (ops/<op>/emu.cpp: each op's CUDA launcher compiled by g++ against the host
// SIMT layer, emu/simt.h, behind the op's CUDA glue). Test-only; no op is named here.
#include <Python.h>

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_emu",
                          "CUDA kernels run on the CPU through the host SIMT layer: torch.ops.lmini_emu (tests)",
                          -1, nullptr};
}  // namespace

PyMODINIT_FUNC PyInit__emu(void) { return PyModule_Create(&module_def); }
