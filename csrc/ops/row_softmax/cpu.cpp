// CPU implementation of lmini::row_softmax: y = softmax(scale * x) over the last dim. The op's
// schema is declared here too.
//
// One row per task (at::parallel_for). Per row: a max pass, one pass that writes
// exp(scale * x - max) (the vectorizable lmini::exp_nonpositive of math.h) and sums it, and
// a scaling pass; fp16/bf16 rows are converted to a float buffer once and back once. The row
// function is compiled for AVX-512, AVX2 and baseline x86-64, one copy picked per call by
// lmini/cpu/isa.h (LMINI_CPU_ISA caps it). Bytes: one read and one write of x (rows stay in
// L1/L2 between passes): memory-bound; the floor is 2 * rows * cols * sizeof(T) / bandwidth.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "lmini/cpu/isa.h"
#include "lmini/cpu/row_convert.h"
#include "lmini/math.h"
#include "lmini/torch_utils.h"
#include "schema.h"

namespace lmini::cpu {
namespace {

// out[i] = softmax(scale * in[i]); `out` may alias `in`. A row of -inf only gives zeros; a
// NaN (or, through inf - inf, a +inf) logit gives a row of NaN, as torch.softmax.
__attribute__((always_inline)) inline void softmax_row_body(const float* in, float* out, int64_t n, float scale) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, scale * in[i]);
  if (m == -INFINITY) {  // the max reduction may have passed over NaN logits: look for them
    bool nan = false;
    for (int64_t i = 0; i < n; ++i) nan |= std::isnan(scale * in[i]);
    for (int64_t i = 0; i < n; ++i) out[i] = nan ? NAN : 0.0f;
    return;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    // min(., 0): an FMA-contracted scale * x - m can be slightly positive when |scale * x| is
    // large (m was rounded, the FMA is not); NaN stays NaN (std::min keeps its first argument).
    const float e = exp_nonpositive(std::min(scale * in[i] - m, 0.0f));
    out[i] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] *= inv;
}

using SoftmaxRowFn = void (*)(const float*, float*, int64_t, float);
#define LMINI_SOFTMAX_ROW_VARIANT(name, attr) \
  attr void name(const float* in, float* out, int64_t n, float scale) { softmax_row_body(in, out, n, scale); }
LMINI_SOFTMAX_ROW_VARIANT(softmax_row_baseline, )
#if LMINI_X86_DISPATCH
LMINI_SOFTMAX_ROW_VARIANT(softmax_row_avx2, LMINI_TARGET_AVX2)
LMINI_SOFTMAX_ROW_VARIANT(softmax_row_avx512, LMINI_TARGET_AVX512)
#endif

template <typename T>
void row_softmax_rows(const T* x, T* y, int64_t rows, int64_t cols, float scale) {
  // Half types: convert once (F16C for fp16, row_convert.h), compute in fp32, convert back.
  const Isa isa = cpu_isa();
  const SoftmaxRowFn softmax_row = LMINI_ISA_PICK(isa, softmax_row);
  const HalfRowFn load_half = pick_half_row_fn(isa != Isa::base);
  const HalfStoreFn store_half = pick_half_store_fn(isa != Isa::base);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t r = begin; r < end; ++r) softmax_row(x + r * cols, y + r * cols, cols, scale);
    } else {
      std::vector<float> buf(cols);
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        convert_row(xr, buf.data(), cols, load_half);
        softmax_row(buf.data(), buf.data(), cols, scale);
        if constexpr (std::is_same_v<T, c10::Half>) {
          store_half(buf.data(), yr, cols);
        } else {
          for (int64_t c = 0; c < cols; ++c) yr[c] = static_cast<T>(buf[c]);
        }
      }
    }
  });
}

at::Tensor row_softmax(const at::Tensor& x_in, double scale) {
  TORCH_CHECK(x_in.device().is_cpu(), "lmini::row_softmax (CPU): x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "lmini::row_softmax: x must have at least 1 dimension");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = new_output(at::empty_like(x));
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  switch (dtype_of(x, "x")) {
    case DType::f32:
      row_softmax_rows(x.data_ptr<float>(), y.data_ptr<float>(), rows, cols, float(scale));
      break;
    case DType::f16:
      row_softmax_rows(x.data_ptr<c10::Half>(), y.data_ptr<c10::Half>(), rows, cols, float(scale));
      break;
    case DType::bf16:
      row_softmax_rows(x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), rows, cols, float(scale));
      break;
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmini, m) { m.def(kRowSoftmaxSchema); }

TORCH_LIBRARY_IMPL(lmini, CPU, m) { m.impl("row_softmax", &row_softmax); }

}  // namespace lmini::cpu
