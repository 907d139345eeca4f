// row_softmax: y[r, :] = softmax(scale * x[r, :]) over the last dimension.
//
// Grid: one block of kRowSoftmaxThreads threads per row. Pass 1 streams the row once, each
// thread keeping an online-softmax state (max, sum) in fp32; a shuffle + shared-memory merge
// gives the row's state to every thread; pass 2 re-reads the row and writes probabilities.
// Bytes: 2 reads + 1 write of the row (the second read hits L2 for rows up to ~MBs);
// FLOPs: ~5 per element. Memory-bound: the floor is 3 * rows * cols * sizeof(T) / bandwidth.
// This is the library's proof-of-mechanism op; the compression kernels reuse its reductions.
#pragma once

#include "lmini/grid.h"
#include "lmini/kernels/reduce.cuh"

namespace lmini {

constexpr int kRowSoftmaxThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kRowSoftmaxThreads)
row_softmax_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t cols, int64_t x_row_stride,
                   int64_t y_row_stride, float scale) {
  __shared__ float scratch[2 * kRowSoftmaxThreads / 32];
  // int64 offsets: rows * stride exceeds 2^31 for large batches.
  const T* xr = x + int64_t(blockIdx.x) * x_row_stride;
  T* yr = y + int64_t(blockIdx.x) * y_row_stride;
  SoftmaxState s = softmax_empty();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s = softmax_push(s, scale * to_float(xr[c]));
  s = block_softmax_merge(s, scratch);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    yr[c] = from_float<T>(softmax_prob(s, scale * to_float(xr[c])));
  }
}

inline Grid row_softmax_grid(int64_t rows) { return {rows}; }

template <typename T>
inline void launch_row_softmax(const T* x, T* y, int64_t rows, int64_t cols, int64_t x_row_stride,
                               int64_t y_row_stride, float scale, cudaStream_t stream) {
  if (rows == 0) return;
  LMINI_LAUNCH(row_softmax_kernel<T>, dim3(unsigned(row_softmax_grid(rows).x)), dim3(kRowSoftmaxThreads), 0, stream, x,
               y, cols, x_row_stride, y_row_stride, scale);
}

}  // namespace lmini
