// Math shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda), so both
// compute with the same formulas. No torch headers: plain C++ that nvcc compiles for the
// device and g++ for the host.
#pragma once

#include <cmath>

#include "lmini/common.cuh"

namespace lmini {

// Running (max, sum of exp(x - max)) of a stream of logits: the online softmax.
// An empty state has max = -inf and sum = 0; merging with it changes nothing, and a row
// whose every logit is -inf keeps sum = 0 (callers turn that into zeros, never NaN).
struct SoftmaxState {
  float max;
  float sum;
};

LMINI_HD SoftmaxState softmax_empty() { return {-INFINITY, 0.0f}; }

LMINI_HD SoftmaxState softmax_merge(SoftmaxState a, SoftmaxState b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return softmax_empty();
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

LMINI_HD SoftmaxState softmax_push(SoftmaxState s, float logit) {
  return softmax_merge(s, SoftmaxState{logit, 1.0f});
}

// exp(logit - max) / sum, or 0 for a row with no finite logit.
LMINI_HD float softmax_prob(SoftmaxState s, float logit) {
  return s.sum > 0.0f ? expf(logit - s.max) / s.sum : 0.0f;
}

}  // namespace lmini
