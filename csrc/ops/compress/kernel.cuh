// compress_folded: the streaming core of the folded compression
// (lmini_kernels/ops/compress/core.py has the math):
//
//   y_j = LayerNorm(x_bj) without affine (x_bj itself when !normalize)
//   s_kj = a_k . y_j + p[k, pidx_bj] (p[k, j] without pidx)
//   acc_bk = sum_{j < len_b} softmax_j(s_k)_j y_j  (B, K, D) fp32;  lse_bk = logsumexp_j s_kj  (B, K) fp32
//
// Tokens j >= lengths[b] are never read (a chunk past the length is empty: m = -inf, l = 0, and
// the merge skips it); an image with no token gives acc = 0, lse = -inf. pidx entries and
// lengths are clamped into range here (the callers check them; a bad one never reads out of
// bounds).
//
// Grid (B * splits, cdiv(K, kCompressKT)): one block per (image, chunk of tokens, tile of 8
// folded rows); all images of a batch in one launch. Block: 128 threads for D <= 1024, else 256.
// Each token tile (tt rows) goes in two phases:
//   1. one warp per token: row -> shared memory in fp32, mean and variance by warp shuffles,
//      normalised in place, then its 8 scores (warp-reduced dot products with a) to shared.
//   2. every thread owns ELEMS columns of the 8 accumulators (registers): one online-softmax
//      rescale per (tile, row), then the tile's weighted rows added from shared memory.
// When a batch has too few images to fill the GPU, the tokens of an image are split across
// blocks; those write (max, sum, acc) partials that compress_folded_merge_kernel combines.
// Bytes: x read once (B*N*D*sizeof(T)) per K tile (one tile for LLaVA-Mini's K = 8), acc written
// once (B*K*D*4). FLOPs: ~4*B*N*8*D (scores + weighted sums) per K tile, in fp32 FMAs.
#pragma once

#include "lmini/grid.h"
#include "lmini/kernels/reduce.cuh"

// Full unrolling keeps acc[kk][e] and w[t] in registers (a dynamic index would put them in
// local memory); g++ unrolls constant loops on its own.
#if defined(__CUDACC__)
#define LMINI_UNROLL _Pragma("unroll")
#else
#define LMINI_UNROLL
#endif

namespace lmini {

constexpr int kCompressKT = 8;     // folded rows per block
constexpr int kCompressMaxTT = 8;  // tokens per tile (at most)

// Threads per block, tokens per tile and accumulator columns per thread for a width D.
LMINI_HD int compress_threads(int64_t dim) { return dim <= 1024 ? 128 : 256; }
LMINI_HD int compress_tile_tokens(int64_t dim) { return dim <= 1024 ? 8 : 4; }

template <typename T, int ELEMS>
__global__ void __launch_bounds__(256, 1)
compress_folded_kernel(const T* __restrict__ x, const float* __restrict__ a, const float* __restrict__ p,
                       const int32_t* __restrict__ pidx, const int32_t* __restrict__ lengths,
                       float* __restrict__ acc_out, float* __restrict__ lse_out, float* __restrict__ part,
                       int64_t n, int64_t dim, int64_t nk, int64_t p_cols, int64_t x_batch_stride,
                       int64_t x_token_stride, int64_t chunk, int splits, int tt, float eps, bool normalize) {
  LMINI_DYNAMIC_SHARED(float, ys);  // tt rows of dim floats: the tile's normalised tokens
  __shared__ float scores[kCompressMaxTT][kCompressKT];
  const int64_t b = blockIdx.x / splits;
  const int64_t sp = blockIdx.x % splits;
  const int64_t k0 = int64_t(blockIdx.y) * kCompressKT;
  const int64_t n0 = sp * chunk;
  int64_t len = n;
  if (lengths != nullptr) {
    const int64_t v = lengths[b];
    len = v < 0 ? 0 : (v > n ? n : v);
  }
  const int64_t n1 = n0 + chunk < len ? n0 + chunk : len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  const T* xb = x + b * x_batch_stride;  // int64: b * stride passes 2^31 for big batches

  float acc[kCompressKT][ELEMS];
  float m[kCompressKT], l[kCompressKT];
  LMINI_UNROLL
  for (int kk = 0; kk < kCompressKT; ++kk) {
    m[kk] = -INFINITY;
    l[kk] = 0.0f;
    LMINI_UNROLL
    for (int e = 0; e < ELEMS; ++e) acc[kk][e] = 0.0f;
  }

  for (int64_t j0 = n0; j0 < n1; j0 += tt) {
    const int tn = int(n1 - j0 < tt ? n1 - j0 : tt);
    // Phase 1: one warp per token.
    for (int t = warp; t < tt; t += nwarps) {
      float* y = ys + t * dim;
      if (t < tn) {
        const T* row = xb + (j0 + t) * x_token_stride;
        float s = 0.0f;
        for (int64_t d = lane; d < dim; d += 32) {
          const float v = to_float(row[d]);
          y[d] = v;
          s += v;
        }
        if (normalize) {  // (every lane of the warp takes the same branch)
          const float mean = warp_sum(s) / float(dim);
          float q = 0.0f;
          for (int64_t d = lane; d < dim; d += 32) {  // each lane reads back only what it wrote
            const float c = y[d] - mean;
            q += c * c;
          }
          const float r = 1.0f / sqrtf(warp_sum(q) / float(dim) + eps);
          for (int64_t d = lane; d < dim; d += 32) y[d] = (y[d] - mean) * r;
        }
        int64_t col = j0 + t;
        if (pidx != nullptr) {
          const int64_t c = pidx[b * n + j0 + t];
          col = c < 0 ? 0 : (c >= p_cols ? p_cols - 1 : c);
        }
        LMINI_UNROLL
        for (int kk = 0; kk < kCompressKT; ++kk) {
          const int64_t k = k0 + kk;
          float dot = 0.0f;
          if (k < nk) {
            const float* ak = a + k * dim;
            for (int64_t d = lane; d < dim; d += 32) dot += ak[d] * y[d];
          }
          dot = warp_sum(dot);  // every lane takes part, whatever k
          if (lane == 0) scores[t][kk] = k < nk ? dot + p[k * p_cols + col] : 0.0f;
        }
      } else {
        for (int64_t d = lane; d < dim; d += 32) y[d] = 0.0f;
        if (lane == 0) {
          LMINI_UNROLL
          for (int kk = 0; kk < kCompressKT; ++kk) scores[t][kk] = -INFINITY;
        }
      }
    }
    __syncthreads();
    // Phase 2: online softmax per row, weighted rows into the register accumulators.
    LMINI_UNROLL
    for (int kk = 0; kk < kCompressKT; ++kk) {
      float mt = -INFINITY;
      LMINI_UNROLL
      for (int t = 0; t < kCompressMaxTT; ++t) {
        if (t < tt) mt = fmaxf(mt, scores[t][kk]);
      }
      const float mnew = fmaxf(m[kk], mt);
      const float alpha = m[kk] == -INFINITY ? 0.0f : expf(m[kk] - mnew);
      float w[kCompressMaxTT];
      float lt = 0.0f;
      LMINI_UNROLL
      for (int t = 0; t < kCompressMaxTT; ++t) {
        w[t] = (t < tn) ? expf(scores[t][kk] - mnew) : 0.0f;
        lt += w[t];
      }
      l[kk] = l[kk] * alpha + lt;
      m[kk] = mnew;
      LMINI_UNROLL
      for (int e = 0; e < ELEMS; ++e) {
        const int64_t d = threadIdx.x + int64_t(e) * blockDim.x;
        if (d < dim) {
          float v = acc[kk][e] * alpha;
          LMINI_UNROLL
          for (int t = 0; t < kCompressMaxTT; ++t) {
            if (t < tt) v += w[t] * ys[t * dim + d];
          }
          acc[kk][e] = v;
        }
      }
    }
    __syncthreads();  // the next tile overwrites ys and scores
  }

  LMINI_UNROLL
  for (int kk = 0; kk < kCompressKT; ++kk) {
    const int64_t k = k0 + kk;
    if (k >= nk) continue;
    if (splits == 1) {
      const float inv = l[kk] > 0.0f ? 1.0f / l[kk] : 0.0f;
      float* dst = acc_out + (b * nk + k) * dim;
      LMINI_UNROLL
      for (int e = 0; e < ELEMS; ++e) {
        const int64_t d = threadIdx.x + int64_t(e) * blockDim.x;
        if (d < dim) dst[d] = acc[kk][e] * inv;
      }
      if (threadIdx.x == 0) lse_out[b * nk + k] = m[kk] + logf(l[kk]);
    } else {
      float* dst = part + (int64_t(blockIdx.x) * nk + k) * (dim + 2);
      if (threadIdx.x == 0) {
        dst[0] = m[kk];
        dst[1] = l[kk];
      }
      LMINI_UNROLL
      for (int e = 0; e < ELEMS; ++e) {
        const int64_t d = threadIdx.x + int64_t(e) * blockDim.x;
        if (d < dim) dst[2 + d] = acc[kk][e];
      }
    }
  }
}

// Grid (B * K): combines the splits' (max, sum, acc) partials of one (image, row).
__global__ void __launch_bounds__(128)
compress_folded_merge_kernel(const float* __restrict__ part, float* __restrict__ acc_out,
                             float* __restrict__ lse_out, int64_t dim, int64_t nk, int splits) {
  const int64_t bk = blockIdx.x;
  const int64_t b = bk / nk, k = bk % nk;
  SoftmaxState st = softmax_empty();
  for (int s = 0; s < splits; ++s) {
    const float* src = part + ((b * splits + s) * nk + k) * (dim + 2);
    st = softmax_merge(st, {src[0], src[1]});
  }
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* src = part + ((b * splits + s) * nk + k) * (dim + 2);
      if (src[1] > 0.0f) v += expf(src[0] - st.max) / st.sum * src[2 + d];
    }
    acc_out[bk * dim + d] = v;
  }
  if (threadIdx.x == 0) lse_out[bk] = st.max + logf(st.sum);
}

// Grids of the streaming kernel (images x token chunks, tiles of 8 folded rows) and of the merge.
inline Grid compress_grid(int64_t batch, int64_t splits, int64_t nk) {
  return {batch * splits, (nk + kCompressKT - 1) / kCompressKT};
}
inline Grid compress_merge_grid(int64_t batch, int64_t nk) { return {batch * nk}; }

// The optional inputs of a launch: pidx (B, N) int32 contiguous or null, its p width p_cols (N
// without pidx), lengths (B,) int32 or null, normalize.
struct CompressExtras {
  const int32_t* pidx;
  const int32_t* lengths;
  int64_t p_cols;
  bool normalize;
};

template <typename T, int ELEMS>
inline void launch_compress_folded_elems(const T* x, const float* a, const float* p, float* acc, float* lse,
                                         float* part, int64_t batch, int64_t n, int64_t dim, int64_t nk,
                                         int64_t sxb, int64_t sxn, float eps, int splits, CompressExtras ex,
                                         cudaStream_t stream) {
  const int64_t chunk = (n + splits - 1) / splits;
  const int threads = compress_threads(dim), tt = compress_tile_tokens(dim);
  const Grid g = compress_grid(batch, splits, nk);
  const dim3 grid(unsigned(g.x), unsigned(g.y));
  auto* kernel = compress_folded_kernel<T, ELEMS>;  // (a macro argument cannot hold the template's comma)
  LMINI_LAUNCH(kernel, grid, dim3(threads), size_t(tt) * dim * sizeof(float), stream, x, a, p, ex.pidx,
               ex.lengths, acc, lse, part, n, dim, nk, ex.p_cols, sxb, sxn, chunk, splits, tt, eps, ex.normalize);
  if (splits > 1) {
    const dim3 merge_grid(unsigned(compress_merge_grid(batch, nk).x));
    LMINI_LAUNCH(compress_folded_merge_kernel, merge_grid, dim3(128), 0, stream, part, acc, lse, dim, nk, splits);
  }
}

// splits >= 1 chunks of tokens per image (the caller picks it, and clamps it to n).
template <typename T>
inline void launch_compress_folded(const T* x, const float* a, const float* p, float* acc, float* lse, float* part,
                                   int64_t batch, int64_t n, int64_t dim, int64_t nk, int64_t sxb, int64_t sxn,
                                   float eps, int splits, CompressExtras ex, cudaStream_t stream) {
  if (batch == 0 || nk == 0) return;
  const int64_t per_thread = (dim + compress_threads(dim) - 1) / compress_threads(dim);
  if (per_thread <= 1) {
    launch_compress_folded_elems<T, 1>(x, a, p, acc, lse, part, batch, n, dim, nk, sxb, sxn, eps, splits, ex, stream);
  } else if (per_thread <= 2) {
    launch_compress_folded_elems<T, 2>(x, a, p, acc, lse, part, batch, n, dim, nk, sxb, sxn, eps, splits, ex, stream);
  } else if (per_thread <= 4) {
    launch_compress_folded_elems<T, 4>(x, a, p, acc, lse, part, batch, n, dim, nk, sxb, sxn, eps, splits, ex, stream);
  } else {
    launch_compress_folded_elems<T, 8>(x, a, p, acc, lse, part, batch, n, dim, nk, sxb, sxn, eps, splits, ex, stream);
  }
}

}  // namespace lmini
