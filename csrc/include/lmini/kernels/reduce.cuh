// Warp and block reductions built on shuffles and shared memory. Every thread of the block
// must call a block_* function (it contains __syncthreads), with blockDim.x a multiple of 32.
#pragma once

#include "lmini/math.h"

namespace lmini {

LMINI_DEVICE float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

LMINI_DEVICE float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

LMINI_DEVICE SoftmaxState warp_softmax_merge(SoftmaxState s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    SoftmaxState o{__shfl_xor_sync(0xffffffffu, s.max, offset),
                   __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = softmax_merge(s, o);
  }
  return s;
}

// Block-wide merge of online-softmax states; every thread gets the result. `scratch` holds
// at least 2 * (blockDim.x / 32) floats of shared memory.
LMINI_DEVICE SoftmaxState block_softmax_merge(SoftmaxState s, float* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  s = warp_softmax_merge(s);
  if (lane == 0) {
    scratch[2 * warp] = s.max;
    scratch[2 * warp + 1] = s.sum;
  }
  __syncthreads();
  SoftmaxState total = softmax_empty();
  for (int w = 0; w < nwarps; ++w) total = softmax_merge(total, {scratch[2 * w], scratch[2 * w + 1]});
  __syncthreads();  // scratch may be reused right after
  return total;
}

// Block-wide sum; every thread gets the result. `scratch` holds blockDim.x / 32 floats.
LMINI_DEVICE float block_sum(float v, float* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < nwarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

}  // namespace lmini
