// Plain-pointer entry points of the CUDA kernels. Implemented in csrc/cuda/*.cu, which nvcc
// compiles for the GPU extension and g++ compiles (with -DLMINI_EMU) into the host SIMT
// module lmini_kernels._emu. No torch and no CUDA types here: both builds include it.
#pragma once

#include <cstdint>

namespace lmini {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

namespace cuda {

// See lmini/kernels/row_softmax.cuh. `stream` is a cudaStream_t (ignored by the host layer).
// Returns nullptr, or the CUDA error string of the launch.
const char* row_softmax(const void* x, void* y, DType dtype, int64_t rows, int64_t cols,
                        int64_t x_row_stride, int64_t y_row_stride, float scale, void* stream);

// See lmini/kernels/prefusion_attention.cuh. q (B, Lq, Hq, d), k and v (B, Lk, Hkv, d), out
// (B, Lq, Hq, d), all contiguous; key_padding_mask (B, Lk) bool or nullptr; d in 64/80/96/128.
const char* prefusion_attention(const void* q, const void* k, const void* v, const void* key_padding_mask, void* out,
                                DType dtype, int64_t batch, int64_t lq, int64_t lk, int64_t hq, int64_t hkv,
                                int64_t d, bool causal, float scale, void* stream);

// See lmini/kernels/compress.cuh. x (B, N, D) with unit stride along D; a (K, D), p (K, N)
// fp32 contiguous; acc (B, K, D), lse (B, K) fp32; part (B * splits, K, D + 2) fp32 scratch
// when splits > 1 (else unused).
const char* compress_folded(const void* x, const float* a, const float* p, float* acc, float* lse, float* part,
                            DType dtype, int64_t batch, int64_t n, int64_t dim, int64_t nk, int64_t x_batch_stride,
                            int64_t x_token_stride, float eps, int64_t splits, void* stream);

}  // namespace cuda
}  // namespace lmini
