// Plain-pointer launcher of compress_folded_kernel and its merge kernel (kernel.cuh).
// Torch-free: launcher.cu is compiled by nvcc into lmini_kernels._C and by g++ (emu.cpp) into
// lmini_kernels._emu.
#pragma once

#include <cstdint>

#include "lmini/dtype.h"

namespace lmini::cuda {

// x (B, N, D) with unit stride along D; a (K, D), p (K, p_cols) fp32 contiguous (p_cols = N
// without pidx); pidx (B, N) int32 contiguous or null (token j of image b uses column
// pidx[b, j] of p); lengths (B,) int32 or null (tokens j >= lengths[b] are never read); acc
// (B, K, D), lse (B, K) fp32; part (B * splits, K, D + 2) fp32 scratch when splits > 1 (else
// unused). `stream` is a cudaStream_t (ignored by the host layer). Returns nullptr, or the
// CUDA error string of the launch.
const char* compress_folded(const void* x, const float* a, const float* p, const int32_t* pidx,
                            const int32_t* lengths, float* acc, float* lse, float* part, DType dtype, int64_t batch,
                            int64_t n, int64_t dim, int64_t nk, int64_t p_cols, int64_t x_batch_stride,
                            int64_t x_token_stride, float eps, bool normalize, int64_t splits, void* stream);

}  // namespace lmini::cuda
