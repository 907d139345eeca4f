// Math shared by the CPU kernels (ops/*/cpu.cpp) and the CUDA kernels (ops/*/kernel.cuh), so both
// compute with the same formulas. No torch headers: plain C++ that nvcc compiles for the
// device and g++ for the host.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "lmini/common.cuh"

namespace lmini {

// Running (max, sum of exp(x - max)) of a stream of logits: the online softmax.
// An empty state has max = -inf and sum = 0; merging with it changes nothing, and a row
// whose every logit is -inf keeps max = -inf (callers turn that into zeros, never NaN).
// A NaN logit makes the state NaN for good, and +inf gives a NaN sum (inf - inf), so such a
// row's probabilities are all NaN, as torch.softmax's (fmaxf alone would drop the NaN).
struct SoftmaxState {
  float max;
  float sum;
};

LMINI_HD SoftmaxState softmax_empty() { return {-INFINITY, 0.0f}; }

LMINI_HD SoftmaxState softmax_merge(SoftmaxState a, SoftmaxState b) {
  if (a.max != a.max || b.max != b.max) return {NAN, NAN};
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return softmax_empty();
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

LMINI_HD SoftmaxState softmax_push(SoftmaxState s, float logit) {
  return softmax_merge(s, SoftmaxState{logit, 1.0f});
}

// exp(logit - max) / sum; 0 for a row with no logit above -inf; NaN for a NaN state.
LMINI_HD float softmax_prob(SoftmaxState s, float logit) {
  return s.max == -INFINITY ? 0.0f : expf(logit - s.max) / s.sum;
}

// exp(x) for x <= 0 (a softmax argument x - max), branch-free so loops over it vectorize:
// exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in
// two so r is exact), exp(r) by its degree-6 Taylor polynomial (relative error < 3e-7 there,
// the float rounding of the result dominates). Below -87.3 the result underflows: 0. The one
// exponential of the CPU kernels' softmax loops.
// n by adding and subtracting 1.5 * 2^23 (rounds to nearest for |v| < 2^22; compilers do not fold
// it without -ffast-math): plain arithmetic that vectorises in every ISA copy. nearbyintf is a
// libm call per element without SSE4.1 (the baseline x86-64 copies) and floorf kept GCC 12 from
// vectorising the AVX-512 copies.
LMINI_HD float exp_nonpositive(float x) {
  // NaN stays NaN (a NaN logit poisons its softmax row, as in torch); -inf and below -87.3 give 0.
  const float in = x;
  const bool nan = x != x;
  const bool underflow = x < -87.3f;
  x = underflow || nan ? -87.3f : x;  // keeps the integer exponent below defined
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return nan ? in : (underflow ? 0.0f : p * scale);
}

}  // namespace lmini
