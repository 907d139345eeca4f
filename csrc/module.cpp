// lmini_kernels._C as a Python module: `import lmini_kernels._C` loads the library, and with it
// every op's registrations (ops/<op>/cpu.cpp declares the schema and the CPU kernel,
// ops/<op>/cuda.cpp the CUDA kernel). Fake (meta) implementations and autograd formulas are
// registered from Python (lmini_kernels/ops/<op>/). No op is named here.
#include <Python.h>

#include "generated/build_info.h"

namespace {
PyObject* build_info_json(PyObject*, PyObject*) { return PyUnicode_FromString(LMINI_BUILD_INFO_JSON); }
PyMethodDef methods[] = {
    {"build_info_json", build_info_json, METH_NOARGS, "What this build compiled, as JSON."},
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lmini-kernels C++/CUDA ops", -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
