// Plain-pointer launcher of prefusion_attention_kernel (kernel.cuh). Torch-free: launcher.cu
// is compiled by nvcc into lmini_kernels._C and by g++ (emu.cpp) into lmini_kernels._emu.
#pragma once

#include <cstdint>

#include "lmini/dtype.h"

namespace lmini::cuda {

// q (B, Lq, Hq, d), k and v (B, Lk, Hkv, d), out (B, Lq, Hq, d), all contiguous;
// key_padding_mask (B, Lk) bool or nullptr; d in 64/80/96/128. `stream` is a cudaStream_t
// (ignored by the host layer). Returns nullptr, or an error string (bad shapes, or the CUDA
// error of the launch).
const char* prefusion_attention(const void* q, const void* k, const void* v, const void* key_padding_mask, void* out,
                                DType dtype, int64_t batch, int64_t lq, int64_t lk, int64_t hq, int64_t hkv,
                                int64_t d, bool causal, float scale, void* stream);

}  // namespace lmini::cuda
