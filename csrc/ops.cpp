// The library's C++ op schemas, declared once. Implementations register per dispatch key:
// csrc/cpu/*.cpp (CPU), csrc/cuda/ops_cuda.cpp (CUDA). Fake (meta) implementations and
// autograd formulas are registered from Python (lmini_kernels/ops/<op>/api.py).
#include <Python.h>
#include <torch/library.h>

#include "generated/build_info.h"

TORCH_LIBRARY(lmini, m) {
  m.def("row_softmax(Tensor x, float scale) -> Tensor");
  m.def("compress_folded(Tensor x, Tensor a, Tensor p, float eps, int splits) -> (Tensor, Tensor)");
  m.def("compress_epilogue(Tensor acc, Tensor wv, Tensor bv, Tensor wo, Tensor bo) -> Tensor");
  m.def("prefusion_attention(Tensor q, Tensor k, Tensor v, bool causal, Tensor? key_padding_mask, float scale) -> Tensor");
}

// The extension is also a Python module, so `import lmini_kernels._C` loads the ops above.
namespace {
PyObject* build_info_json(PyObject*, PyObject*) { return PyUnicode_FromString(LMINI_BUILD_INFO_JSON); }
PyMethodDef methods[] = {
    {"build_info_json", build_info_json, METH_NOARGS, "What this build compiled, as JSON."},
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lmini-kernels C++/CUDA ops", -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
