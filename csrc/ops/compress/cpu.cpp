// CPU implementation of lmini::compress_folded, the streaming core of the folded compression
// (lmini_kernels/ops/compress/core.py); the op's schema is declared here too:
//
//   y_j = LayerNorm(x_bj) without affine;  s_kj = a_k . y_j + p_kj
//   acc_bk = sum_j softmax_j(s_k)_j y_j  (B, K, D) fp32;  lse_bk = logsumexp_j s_kj  (B, K) fp32
//
//   (s_kj takes p[k, pidx_bj] with pidx; only tokens j < lengths[b] are read; y_j = x_bj
//   without normalize; an image with no token gives acc = 0, lse = -inf)
//
// Two paths, by K (kGemmMinRows, with the measurements). K < 64, the tile kernel below:
// one task per (image, chunk of tokens) through at::parallel_for (chunks only when there
// are too few images to feed every thread; partial states are merged at the end). A task walks
// its tokens in tiles of kTile: the rows are converted to fp32 into a padded tile, normalised,
// scored against all K folded rows, then one online-softmax rescale per (tile, k) and a
// weighted sum into the task's K x D accumulator. x is read once; a (K x D), the tile and the
// accumulator stay in L1/L2.
// Bytes: B*N*D*sizeof(T) read, B*K*D*4 written. FLOPs: ~4*B*N*K*D (scores + weighted sums).
// For LLaVA-Mini (K = 8, D = 1024) that is 16 FLOP per fp32 element loaded: the inner loops
// must run as wide FMAs, so the hot function is compiled for AVX-512, AVX2 and baseline x86-64
// over GCC vector types of one register each (16, 8 and 4 floats), one copy picked per call by
// lmini/cpu/isa.h (LMINI_CPU_ISA caps it). K >= 64: GEMMs per image (compress_folded_gemm).
// LMINI_COMPRESS_CPU_PATH=tile|gemm forces one (tests, measurements).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "lmini/cpu/isa.h"
#include "lmini/cpu/row_convert.h"
#include "lmini/math.h"
#include "lmini/torch_utils.h"
#include "schema.h"

namespace lmini::cpu {
namespace {

constexpr int kTile = 16;  // tokens per tile: 16 x D fp32 (64 KiB at D = 1024) stays in L2
constexpr int kPad = 16;   // rows padded to a multiple of 16 floats: whole vectors at every width

// W floats in one vector register of the ISA variant that uses it: 16 with AVX-512, 8 with
// AVX2, 4 with SSE (and NEON). A GCC vector wider than the target's registers has no machine
// mode, and every operation on it goes through the stack: 16-float vectors in the AVX2 copy
// ran 10-20x slower than this on an AVX2-only AMD EPYC.
template <int W>
struct VecOf;
template <>
struct VecOf<4> {
  typedef float type __attribute__((vector_size(16), aligned(sizeof(float))));
};
template <>
struct VecOf<8> {
  typedef float type __attribute__((vector_size(32), aligned(sizeof(float))));
};
template <>
struct VecOf<16> {
  typedef float type __attribute__((vector_size(64), aligned(sizeof(float))));
};

template <int W>
__attribute__((always_inline)) inline float hsum(typename VecOf<W>::type v) {
  float t[W];
  std::memcpy(t, &v, sizeof(t));
  for (int h = W / 2; h > 0; h /= 2)
    for (int i = 0; i < h; ++i) t[i] += t[i + h];
  return t[0];
}

// Centres row y (dim values, zero up to dp) in place, keeps its padding zero; returns 1/std.
template <int W>
__attribute__((always_inline)) inline float centre_row(float* __restrict row, int64_t dim, int64_t dp, float eps) {
  using vf = typename VecOf<W>::type;
  vf* y = reinterpret_cast<vf*>(row);
  vf sv = {};
  for (int64_t i = 0; i < dp / W; ++i) sv += y[i];
  const float mean = hsum<W>(sv) / float(dim);
  vf cv = {};
  for (int64_t i = 0; i < dp / W; ++i) {
    const vf c = y[i] - mean;
    y[i] = c;
    cv += c * c;
  }
  // The zero padding contributed pad * mean^2 to the centred sum of squares.
  const float var = std::max(0.0f, (hsum<W>(cv) - float(dp - dim) * mean * mean) / float(dim));
  for (int64_t d = dim; d < dp; ++d) row[d] = 0.0f;
  return 1.0f / std::sqrt(var + eps);
}

// One tile of `tn` tokens (rows of `yt`, stride dp, zero beyond dim and beyond tn): normalise
// the rows, score them against the K folded rows, update the online softmax (m, l) and acc.
// W: floats per vector; TV: rows of a per score pass (4 tokens x TV rows of accumulators).
// p (nk x p_stride) is read at column cols[t] for token t of the tile. Without `normalize` the
// rows are taken as they are (1/std = 1).
template <int W, int TV>
__attribute__((always_inline)) inline void process_tile_body(float* __restrict yt, int tn, int64_t dim, int64_t dp,
                                                             float eps, bool normalize, const float* __restrict a,
                                                             const float* __restrict p, int64_t p_stride,
                                                             const int32_t* __restrict cols, int64_t nk,
                                                             float* __restrict acc, float* __restrict m,
                                                             float* __restrict l, float* __restrict s) {
  // Rows are centred in place and their 1/std kept apart: scores and weights take the scalar,
  // which saves a normalising pass over every row.
  using vf = typename VecOf<W>::type;
  float rs[kTile];
  for (int t = 0; t < tn && !normalize; ++t) rs[t] = 1.0f;
  for (int t = 0; t < tn && normalize; ++t) rs[t] = centre_row<W>(yt + t * dp, dim, dp, eps);
  // Scores, 4 tokens x TV rows of a per pass: 4 * TV accumulators, each loaded vector feeds
  // TV or 4 FMAs. nk is a multiple of 4 here (a padded with zero rows), tiles hold kTile rows
  // (zero beyond tn).
  for (int64_t k = 0; k < nk; k += TV) {
    const vf* ak[TV];
    for (int v = 0; v < TV; ++v) ak[v] = reinterpret_cast<const vf*>(a + (k + v) * dp);
    for (int t = 0; t < tn; t += 4) {
      vf c[4][TV] = {};
      for (int64_t i = 0; i < dp / W; ++i) {
        vf av[TV];
        for (int v = 0; v < TV; ++v) av[v] = ak[v][i];
        for (int u = 0; u < 4; ++u) {
          const vf yv = reinterpret_cast<const vf*>(yt + (t + u) * dp)[i];
          for (int v = 0; v < TV; ++v) c[u][v] += av[v] * yv;
        }
      }
      for (int u = 0; u < 4 && t + u < tn; ++u) {
        for (int v = 0; v < TV; ++v) s[(t + u) * nk + k + v] = hsum<W>(c[u][v]) * rs[t + u] + p[(k + v) * p_stride + cols[t + u]];
      }
    }
  }
  // Online softmax: one rescale of acc_k per tile, then the tile's weighted rows added, four
  // rows of acc at a time so each loaded y vector feeds four FMAs.
  float w[4][kTile];
  for (int64_t k = 0; k < nk; k += 4) {
    float alpha[4];
    for (int v = 0; v < 4; ++v) {
      float mt = -INFINITY;
      for (int t = 0; t < tn; ++t) mt = std::max(mt, s[t * nk + k + v]);
      const float mnew = std::max(m[k + v], mt);
      alpha[v] = m[k + v] == -INFINITY ? 0.0f : std::exp(m[k + v] - mnew);
      float lt = 0.0f;
      for (int t = 0; t < tn; ++t) {
        const float e = std::exp(s[t * nk + k + v] - mnew);
        lt += e;
        w[v][t] = e * rs[t];  // acc sums e * y = (e / std) * centred row
      }
      l[k + v] = l[k + v] * alpha[v] + lt;
      m[k + v] = mnew;
    }
    vf* ac0 = reinterpret_cast<vf*>(acc + (k + 0) * dp);
    vf* ac1 = reinterpret_cast<vf*>(acc + (k + 1) * dp);
    vf* ac2 = reinterpret_cast<vf*>(acc + (k + 2) * dp);
    vf* ac3 = reinterpret_cast<vf*>(acc + (k + 3) * dp);
    for (int64_t i = 0; i < dp / W; ++i) {
      vf v0 = ac0[i] * alpha[0], v1 = ac1[i] * alpha[1], v2 = ac2[i] * alpha[2], v3 = ac3[i] * alpha[3];
      for (int t = 0; t < tn; ++t) {
        const vf yv = reinterpret_cast<const vf*>(yt + t * dp)[i];
        v0 += w[0][t] * yv;
        v1 += w[1][t] * yv;
        v2 += w[2][t] * yv;
        v3 += w[3][t] * yv;
      }
      ac0[i] = v0;
      ac1[i] = v1;
      ac2[i] = v2;
      ac3[i] = v3;
    }
  }
}

using TileFn = void (*)(float*, int, int64_t, int64_t, float, bool, const float*, const float*, int64_t,
                       const int32_t*, int64_t, float*, float*, float*, float*);

#define LMINI_TILE_VARIANT(name, attr, W, TV)                                                                      \
  attr void name(float* yt, int tn, int64_t dim, int64_t dp, float eps, bool normalize, const float* a,           \
                 const float* p, int64_t p_stride, const int32_t* cols, int64_t nk, float* acc, float* m, float* l, \
                 float* s) {                                                                                       \
    process_tile_body<W, TV>(yt, tn, dim, dp, eps, normalize, a, p, p_stride, cols, nk, acc, m, l, s);              \
  }
// Accumulators per score pass: 4 x TV vectors (8 of 16 xmm/ymm registers, 16 of 32 zmm).
LMINI_TILE_VARIANT(process_tile_baseline, , 4, 2)
#if LMINI_X86_DISPATCH
LMINI_TILE_VARIANT(process_tile_avx2, LMINI_TARGET_AVX2, 8, 2)
LMINI_TILE_VARIANT(process_tile_avx512, LMINI_TARGET_AVX512, 16, 4)
#endif

template <typename T>
void load_rows(const T* x, int64_t sn, int tn, int64_t dim, int64_t dp, float* yt, HalfRowFn half_fn) {
  for (int t = 0; t < kTile; ++t) {
    float* y = yt + t * dp;
    if (t < tn) {
      convert_row(x + t * sn, y, dim, half_fn);
      std::fill(y + dim, y + dp, 0.0f);
    } else {
      std::fill(y, y + dp, 0.0f);
    }
  }
}

struct Shape {
  int64_t batch, n, dim, dp, nk, sb, sn, splits;
  int64_t nk4;    // nk rounded up to a multiple of 4 (a and p padded with zero rows)
  int64_t cols;   // T: columns of p
};

// The optional arguments, checked: pidx (B, N) contiguous int32 in [0, T) or null, lengths
// (B,) int32 in [0, N] or null.
struct Extras {
  const int32_t* pidx;
  const int32_t* lengths;
  bool normalize;
  int64_t seen(int64_t b, int64_t n) const { return lengths ? lengths[b] : n; }
};

template <typename T>
void compress_folded_impl(const T* x, const float* a, const float* p, float* acc_out, float* lse_out, float* part,
                          const Shape& sh, float eps, const Extras& ex) {
  const int64_t chunk = (sh.n + sh.splits - 1) / sh.splits;
  const int64_t part_row = sh.dim + 2;  // (m, l, acc[dim]) per (task, k)
  const Isa isa = cpu_isa();
  const TileFn process_tile = LMINI_ISA_PICK(isa, process_tile);
  const HalfRowFn half_fn = pick_half_row_fn(isa != Isa::base);
  at::parallel_for(0, sh.batch * sh.splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<float, std::allocator<float>> yt(kTile * sh.dp), acc(sh.nk4 * sh.dp);
    std::vector<float> m(sh.nk4), l(sh.nk4), s(kTile * sh.nk4);
    int32_t cols[kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / sh.splits, sp = task % sh.splits;
      // Tokens past the image's length are never read: a chunk past it is empty (m = -inf, l = 0).
      const int64_t n0 = sp * chunk, n1 = std::min(ex.seen(b, sh.n), n0 + chunk);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.0f);
      for (int64_t j0 = n0; j0 < n1; j0 += kTile) {
        const int tn = int(std::min<int64_t>(kTile, n1 - j0));
        for (int t = 0; t < tn; ++t) cols[t] = ex.pidx ? ex.pidx[b * sh.n + j0 + t] : int32_t(j0 + t);
        load_rows(x + b * sh.sb + j0 * sh.sn, sh.sn, tn, sh.dim, sh.dp, yt.data(), half_fn);
        process_tile(yt.data(), tn, sh.dim, sh.dp, eps, ex.normalize, a, p, sh.cols, cols, sh.nk4, acc.data(),
                     m.data(), l.data(), s.data());
      }
      for (int64_t k = 0; k < sh.nk; ++k) {
        const float* src = acc.data() + k * sh.dp;
        if (sh.splits == 1) {
          const float inv = l[k] > 0.0f ? 1.0f / l[k] : 0.0f;
          float* dst = acc_out + (b * sh.nk + k) * sh.dim;
          for (int64_t d = 0; d < sh.dim; ++d) dst[d] = src[d] * inv;
          lse_out[b * sh.nk + k] = m[k] + std::log(l[k]);  // no token: -inf + log(0) = -inf
        } else {
          float* dst = part + (task * sh.nk + k) * part_row;
          dst[0] = m[k];
          dst[1] = l[k];
          std::memcpy(dst + 2, src, sh.dim * sizeof(float));
        }
      }
    }
  });
  if (sh.splits == 1) return;
  // Merge the chunks' online-softmax states (lmini/math.h) and their accumulators; empty chunks
  // (m = -inf, l = 0) change nothing, an image with no token keeps acc = 0, lse = -inf.
  at::parallel_for(0, sh.batch * sh.nk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / sh.nk, k = bk % sh.nk;
      SoftmaxState st = softmax_empty();
      for (int64_t sp = 0; sp < sh.splits; ++sp) {
        const float* src = part + ((b * sh.splits + sp) * sh.nk + k) * part_row;
        st = softmax_merge(st, {src[0], src[1]});
      }
      float* dst = acc_out + bk * sh.dim;
      std::fill(dst, dst + sh.dim, 0.0f);
      for (int64_t sp = 0; sp < sh.splits; ++sp) {
        const float* src = part + ((b * sh.splits + sp) * sh.nk + k) * part_row;
        if (src[1] == 0.0f) continue;  // an empty chunk
        const float w = std::exp(src[0] - st.max) / st.sum;
        for (int64_t d = 0; d < sh.dim; ++d) dst[d] += w * src[2 + d];
      }
      lse_out[bk] = st.max + std::log(st.sum);
    }
  });
}

// ---- Many folded rows: GEMMs -------------------------------------------------------------------
// With K in the thousands (MiniCPM-V 2.x folded in kv space: K = 1152..3072, D = 1152) the
// tile kernel's K x D accumulator (5-14 MB) leaves L2 and every tile's rescale of it streams
// from memory. Then per image: y (L x D, fp32) converted and normalised row by row, S = y a^T
// (at::mm), the exact softmax over the tokens column by column (no online rescale: the whole
// image's L x K scores are at hand), acc = softmax(S)^T y (at::mm), one image after the other
// so the GEMMs get every thread. `splits` is not used there (nothing to merge); results match
// the tile kernel's up to rounding.

// Rows [j0, j1) of the image: x -> fp32 y (row stride dp, zero padding), LayerNorm without
// affine when normalize (the tile kernel's centring, then the 1/std applied).
template <int W, typename T>
__attribute__((always_inline)) inline void gemm_rows_body(const T* x, int64_t sn, int64_t j0, int64_t j1, int64_t dim,
                                                          int64_t dp, float eps, bool normalize, float* y,
                                                          HalfRowFn half_fn) {
  using vf = typename VecOf<W>::type;
  for (int64_t j = j0; j < j1; ++j) {
    float* r = y + j * dp;
    convert_row(x + j * sn, r, dim, half_fn);
    std::fill(r + dim, r + dp, 0.0f);
    if (!normalize) continue;
    const float rs = centre_row<W>(r, dim, dp, eps);
    vf* v = reinterpret_cast<vf*>(r);
    for (int64_t i = 0; i < dp / W; ++i) v[i] *= rs;
  }
}

template <typename T>
using RowsFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, float, bool, float*, HalfRowFn);
#define LMINI_ROWS_VARIANT(name, attr, W)                                                                      \
  template <typename T>                                                                                        \
  attr void name(const T* x, int64_t sn, int64_t j0, int64_t j1, int64_t dim, int64_t dp, float eps,           \
                 bool normalize, float* y, HalfRowFn half_fn) {                                                \
    gemm_rows_body<W>(x, sn, j0, j1, dim, dp, eps, normalize, y, half_fn);                                     \
  }
LMINI_ROWS_VARIANT(gemm_rows_baseline, , 4)
#if LMINI_X86_DISPATCH
LMINI_ROWS_VARIANT(gemm_rows_avx2, LMINI_TARGET_AVX2, 8)
LMINI_ROWS_VARIANT(gemm_rows_avx512, LMINI_TARGET_AVX512, 16)
#endif

// Columns [k0, k1) of the scores s (rows 0..len, row stride nk): add the key-position logits
// (pt: p transposed, T x nk; row pidx[j] or j), then exp(s - max) in place; m and l get each
// column's max and sum. A NaN score makes its column's max NaN (NaN sticks in the compare).
__attribute__((always_inline)) inline void gemm_softmax_body(float* __restrict s, int64_t len, int64_t nk, int64_t k0,
                                                             int64_t k1, const float* __restrict pt,
                                                             const int32_t* __restrict pidx, float* __restrict m,
                                                             float* __restrict l) {
  for (int64_t k = k0; k < k1; ++k) m[k] = -INFINITY, l[k] = 0.0f;
  for (int64_t j = 0; j < len; ++j) {
    float* __restrict row = s + j * nk;
    const float* __restrict pr = pt + (pidx ? int64_t(pidx[j]) : j) * nk;
    for (int64_t k = k0; k < k1; ++k) {
      const float v = row[k] + pr[k];
      row[k] = v;
      m[k] = (v > m[k] || v != v) ? v : m[k];
    }
  }
  for (int64_t j = 0; j < len; ++j) {
    float* __restrict row = s + j * nk;
    for (int64_t k = k0; k < k1; ++k) {
      const float e = exp_nonpositive(row[k] - m[k]);
      row[k] = e;
      l[k] += e;
    }
  }
}

using SoftmaxFn = void (*)(float*, int64_t, int64_t, int64_t, int64_t, const float*, const int32_t*, float*, float*);
#define LMINI_SOFTMAX_VARIANT(name, attr)                                                                      \
  attr void name(float* s, int64_t len, int64_t nk, int64_t k0, int64_t k1, const float* pt, const int32_t* pidx, \
                 float* m, float* l) {                                                                         \
    gemm_softmax_body(s, len, nk, k0, k1, pt, pidx, m, l);                                                     \
  }
LMINI_SOFTMAX_VARIANT(gemm_softmax_baseline, )
#if LMINI_X86_DISPATCH
LMINI_SOFTMAX_VARIANT(gemm_softmax_avx2, LMINI_TARGET_AVX2)
LMINI_SOFTMAX_VARIANT(gemm_softmax_avx512, LMINI_TARGET_AVX512)
#endif

template <typename T>
void compress_folded_gemm(const T* x, const at::Tensor& a, const at::Tensor& p, at::Tensor& acc, at::Tensor& lse,
                          const Shape& sh, float eps, const Extras& ex) {
  const Isa isa = cpu_isa();
  const SoftmaxFn softmax_cols = LMINI_ISA_PICK(isa, gemm_softmax);
  const HalfRowFn half_fn = pick_half_row_fn(isa != Isa::base);
#if LMINI_X86_DISPATCH
  const RowsFn<T> rows_in = isa_pick(isa, gemm_rows_baseline<T>, gemm_rows_avx2<T>, gemm_rows_avx512<T>);
#else
  const RowsFn<T> rows_in = gemm_rows_baseline<T>;
#endif
  const at::Tensor at_ = a.t();
  const at::Tensor pt = p.t().contiguous();  // (T, K): one token's logits are a contiguous row
  at::Tensor y_pad = at::empty({sh.n, sh.dp}, acc.options());  // rows padded for whole vectors
  at::Tensor s = at::empty({sh.n, sh.nk}, acc.options());
  std::vector<float> m(sh.nk), l(sh.nk);
  constexpr int64_t kCols = 64;  // score columns per softmax task
  for (int64_t b = 0; b < sh.batch; ++b) {
    const int64_t len = ex.seen(b, sh.n);
    float* lse_b = lse.data_ptr<float>() + b * sh.nk;
    if (len == 0) {
      acc[b].zero_();
      std::fill(lse_b, lse_b + sh.nk, -INFINITY);
      continue;
    }
    const T* xb = x + b * sh.sb;
    float* yp = y_pad.data_ptr<float>();
    at::parallel_for(0, len, 16, [&](int64_t j0, int64_t j1) {
      rows_in(xb, sh.sn, j0, j1, sh.dim, sh.dp, eps, ex.normalize, yp, half_fn);
    });
    const at::Tensor yb = y_pad.narrow(0, 0, len).narrow(1, 0, sh.dim);
    at::Tensor sb = s.narrow(0, 0, len);
    at::mm_out(sb, yb, at_);
    const int32_t* pidx = ex.pidx ? ex.pidx + b * sh.n : nullptr;
    at::parallel_for(0, (sh.nk + kCols - 1) / kCols, 1, [&](int64_t c0, int64_t c1) {
      softmax_cols(s.data_ptr<float>(), len, sh.nk, c0 * kCols, std::min(sh.nk, c1 * kCols), pt.data_ptr<float>(),
                   pidx, m.data(), l.data());
    });
    at::Tensor acc_b = acc[b];
    at::mm_out(acc_b, sb.t(), yb);
    float* ap = acc_b.data_ptr<float>();
    at::parallel_for(0, sh.nk, 16, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const float inv = 1.0f / l[k];
        for (int64_t d = 0; d < sh.dim; ++d) ap[k * sh.dim + d] *= inv;
        lse_b[k] = m[k] + std::log(l[k]);
      }
    });
  }
}

// K from which the GEMM path beats the tile kernel. Measured 2026-12-03 on the 2-vCPU AVX-512
// Xeon (L2 2 MiB/core), 2 threads, best of 2-3 runs, a shared machine (load 10-50: +-30%).
// Tile vs GEMM, fp32 x, normalize, same run: B=10 N=1024 D=1152: K=32 18.7 / 38.5 ms, K=64
// 37.3 / 32.2, K=128 72 / 55, K=256 157 / 87; B=16 N=576 D=1024: K=8 8.0 / 9.8, K=32
// 18.7 / 15.5, K=64 35.8 / 25.3, K=256 139 / 72.
// Against core_torch (torch GEMMs), B=10 N=1024 D=1152 normalize=False, C++ vs torch, same
// run: K=1792 fp32 265 vs 404 ms, bf16 263 vs 421; K=3072 fp32 440 vs 742, bf16 452 vs 758
// (about 320 GFLOP/s, MKL near peak; a busier run: 616 vs 776 ... 1150 vs 1504). The tile
// kernel alone had taken 672 (K=1792) and 1619 ms (K=3072) fp32, 5338 ms bf16 K=3072, against
// torch's 407 / 1578 / 1661 in that run. LLaVA-Mini (B=64 N=576 D=1024 K=8) stays on the tile
// kernel: 30.1 ms fp32 / 28.0 bf16 against 31.8 / 28.9 before pidx/lengths/normalize (runs
// interleaved under the same load).
constexpr int64_t kGemmMinRows = 64;

std::tuple<at::Tensor, at::Tensor> compress_folded(const at::Tensor& x_in, const at::Tensor& a_in,
                                                   const at::Tensor& p_in, double eps, int64_t splits,
                                                   const std::optional<at::Tensor>& pidx_in,
                                                   const std::optional<at::Tensor>& lengths_in, bool normalize) {
  TORCH_CHECK(x_in.device().is_cpu(), "lmini::compress_folded (CPU): x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 3, "lmini::compress_folded: x must be (B, N, D), got ", x_in.sizes());
  TORCH_CHECK(a_in.dim() == 2 && a_in.size(1) == x_in.size(2) && a_in.scalar_type() == at::kFloat,
              "lmini::compress_folded: a must be float32 (K, D=", x_in.size(2), "), got ", a_in.scalar_type(), " ",
              a_in.sizes());
  const bool has_pidx = pidx_in.has_value() && pidx_in->defined();
  const bool has_lengths = lengths_in.has_value() && lengths_in->defined();
  TORCH_CHECK(p_in.dim() == 2 && p_in.size(0) == a_in.size(0) && p_in.scalar_type() == at::kFloat &&
                  (has_pidx ? p_in.size(1) >= 1 : p_in.size(1) == x_in.size(1)),
              "lmini::compress_folded: p must be float32 (K, N) = (", a_in.size(0), ", ", x_in.size(1),
              ") (or (K, T), T >= 1, with pidx), got ", p_in.scalar_type(), " ", p_in.sizes());
  TORCH_CHECK(splits >= 0, "lmini::compress_folded: splits must be >= 0 (0 = automatic), got ", splits);
  const int64_t batch = x_in.size(0), n = x_in.size(1), ncols = p_in.size(1);
  at::Tensor pidx, lengths;
  if (has_pidx) {
    TORCH_CHECK(pidx_in->device().is_cpu() && pidx_in->scalar_type() == at::kInt && pidx_in->dim() == 2 &&
                    pidx_in->size(0) == batch && pidx_in->size(1) == n,
                "lmini::compress_folded: pidx must be an int32 CPU tensor (B, N) = (", batch, ", ", n, "), got ",
                pidx_in->scalar_type(), " ", pidx_in->sizes(), " on ", pidx_in->device());
    pidx = pidx_in->contiguous();
  }
  if (has_lengths) {
    TORCH_CHECK(lengths_in->device().is_cpu() && lengths_in->scalar_type() == at::kInt && lengths_in->dim() == 1 &&
                    lengths_in->size(0) == batch,
                "lmini::compress_folded: lengths must be an int32 CPU tensor (B,) = (", batch, ",), got ",
                lengths_in->scalar_type(), " ", lengths_in->sizes(), " on ", lengths_in->device());
    lengths = lengths_in->contiguous();
    const int32_t* lp = lengths.data_ptr<int32_t>();
    for (int64_t b = 0; b < batch; ++b) {
      TORCH_CHECK(lp[b] >= 0 && lp[b] <= n, "lmini::compress_folded: lengths[", b, "] = ", lp[b],
                  " is outside [0, N = ", n, "]");
    }
  }
  if (has_pidx) {  // only the entries of seen tokens are ever used, and only those must be valid
    const int32_t* ip = pidx.data_ptr<int32_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t len = has_lengths ? lengths.data_ptr<int32_t>()[b] : n;
      for (int64_t j = 0; j < len; ++j) {
        TORCH_CHECK(ip[b * n + j] >= 0 && ip[b * n + j] < ncols, "lmini::compress_folded: pidx[", b, ", ", j,
                    "] = ", ip[b * n + j], " is outside [0, T = ", ncols, ") (T: the columns of p)");
      }
    }
  }
  const Extras ex{has_pidx ? pidx.data_ptr<int32_t>() : nullptr, has_lengths ? lengths.data_ptr<int32_t>() : nullptr,
                  normalize};
  const at::Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const at::Tensor p = p_in.contiguous();
  Shape sh{x.size(0), x.size(1), x.size(2), 0, a_in.size(0), x.stride(0), x.stride(1), splits, 0, ncols};
  sh.dp = (sh.dim + kPad - 1) / kPad * kPad;
  // Rows a multiple of 1 KiB apart fall in the same L1 sets (4 KiB aliasing at D = 1024: the 16
  // rows of a tile then fight over 8 ways); one extra cache line per row spreads them out.
  if (sh.dp % 256 == 0) sh.dp += kPad;
  at::Tensor acc = new_output(at::empty({sh.batch, sh.nk, sh.dim}, x.options().dtype(at::kFloat)));
  at::Tensor lse = new_output(at::empty({sh.batch, sh.nk}, x.options().dtype(at::kFloat)));
  if (sh.batch == 0 || sh.nk == 0) return {acc, lse};
  TORCH_CHECK(sh.n > 0 && sh.dim > 0, "lmini::compress_folded: x needs N >= 1 tokens of D >= 1 features");
  const float e = float(eps);
  // LMINI_COMPRESS_CPU_PATH=tile|gemm forces a path (tests and measurements), read every call.
  const char* force = std::getenv("LMINI_COMPRESS_CPU_PATH");
  const bool gemm = force != nullptr && std::string(force) == "gemm"   ? true
                    : force != nullptr && std::string(force) == "tile" ? false
                                                                       : sh.nk >= kGemmMinRows;
  if (gemm) {
    const at::Tensor a = a_in.contiguous();
    switch (dtype_of(x, "x")) {
      case DType::f32:
        compress_folded_gemm(x.data_ptr<float>(), a, p, acc, lse, sh, e, ex);
        break;
      case DType::f16:
        compress_folded_gemm(x.data_ptr<c10::Half>(), a, p, acc, lse, sh, e, ex);
        break;
      case DType::bf16:
        compress_folded_gemm(x.data_ptr<c10::BFloat16>(), a, p, acc, lse, sh, e, ex);
        break;
    }
    return {acc, lse};
  }
  if (sh.splits == 0) {
    // Enough tasks for every thread; a chunk keeps at least 64 tokens.
    const int64_t threads = at::get_num_threads();
    const int64_t want = (4 * threads + sh.batch - 1) / sh.batch;
    sh.splits = std::max<int64_t>(1, std::min<int64_t>(want, sh.n / 64));
  }
  sh.splits = std::min(sh.splits, sh.n);
  // a padded to dp columns and nk4 rows (p to nk4 rows) so every inner loop runs whole blocks.
  sh.nk4 = (sh.nk + 3) / 4 * 4;
  std::vector<float> a_pad(sh.nk4 * sh.dp, 0.0f), p_pad(sh.nk4 * sh.cols, 0.0f);
  const at::Tensor a = a_in.contiguous();
  for (int64_t k = 0; k < sh.nk; ++k) {
    std::memcpy(a_pad.data() + k * sh.dp, a.data_ptr<float>() + k * sh.dim, sh.dim * sizeof(float));
  }
  std::memcpy(p_pad.data(), p.data_ptr<float>(), sh.nk * sh.cols * sizeof(float));
  std::vector<float> part(sh.splits > 1 ? sh.batch * sh.splits * sh.nk * (sh.dim + 2) : 0);
  switch (dtype_of(x, "x")) {
    case DType::f32:
      compress_folded_impl(x.data_ptr<float>(), a_pad.data(), p_pad.data(), acc.data_ptr<float>(),
                           lse.data_ptr<float>(), part.data(), sh, e, ex);
      break;
    case DType::f16:
      compress_folded_impl(x.data_ptr<c10::Half>(), a_pad.data(), p_pad.data(), acc.data_ptr<float>(),
                           lse.data_ptr<float>(), part.data(), sh, e, ex);
      break;
    case DType::bf16:
      compress_folded_impl(x.data_ptr<c10::BFloat16>(), a_pad.data(), p_pad.data(), acc.data_ptr<float>(),
                           lse.data_ptr<float>(), part.data(), sh, e, ex);
      break;
  }
  return {acc, lse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmini, m) { m.def(kCompressFoldedSchema); }

TORCH_LIBRARY_IMPL(lmini, CPU, m) { m.impl("compress_folded", &compress_folded); }

}  // namespace lmini::cpu
