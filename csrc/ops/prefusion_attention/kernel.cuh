// prefusion_attention: out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h / G]) v[b, j, h / G]
// over the keys visible to query i (j <= Lk - Lq + i when causal: bottom-right alignment; and
// key_padding_mask[b, j] false). A query with no visible key gets zeros.
//
// Grid (cdiv(Lq, 4) * B * Hq) on axis x (prefusion_grid; axis y would cap B * Hq at 65,535),
// 128 threads: block (qb, bh) = (x % cdiv(Lq, 4), x / cdiv(Lq, 4)); warp w owns query row
// qb * 4 + w of head bh % Hq. The block streams tiles of 32 keys and their values through shared
// memory (as fp32; the K rows padded by one float so that lane j reading key j hits its own
// bank); in a tile, lane j scores key j against the warp's query, the warp merges max and
// sum with shuffles (online softmax in the base-2 domain), and each lane accumulates the
// output dims c = lane + 32u with the tile's probabilities read back from shared memory.
// Simple CUDA-core code that the host SIMT layer can run (no tensor cores, no async
// copies): a correct baseline, not a flash-attention competitor.
// FLOPs: 4 * B * Hq * d * (visible pairs); bytes: q and out once, k and v once per block of
// 4 query rows (L2 absorbs the re-reads at pre-fusion sizes).
#pragma once

#include "lmini/grid.h"
#include "lmini/kernels/reduce.cuh"

namespace lmini {

constexpr int kPrefusionWarps = 4;
constexpr int kPrefusionTile = 32;

LMINI_DEVICE int prefusion_imin(int a, int b) { return a < b ? a : b; }

template <typename T, int D>
__global__ void __launch_bounds__(kPrefusionWarps * 32)
prefusion_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const bool* __restrict__ pad, T* __restrict__ out, int lq, int lk, int hq,
                           int hkv, bool causal, float scale_log2) {
  constexpr int kPer = (D + 31) / 32;  // output dims per lane
  __shared__ float q_s[kPrefusionWarps][D];
  __shared__ float k_s[kPrefusionTile][D + 1];
  __shared__ float v_s[kPrefusionTile][D];
  __shared__ float p_s[kPrefusionWarps][kPrefusionTile];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t q_blocks = (lq + kPrefusionWarps - 1) / kPrefusionWarps;
  const int qb = int(int64_t(blockIdx.x) % q_blocks);
  const int64_t bh = int64_t(blockIdx.x) / q_blocks;
  const int h = int(bh % hq), hk = h / (hq / hkv);
  const int64_t b = bh / hq;
  const int i = qb * kPrefusionWarps + warp;  // this warp's query row
  const bool row_ok = i < lq;
  const int shift = lk - lq;
  const int last_row = prefusion_imin(lq - 1, qb * kPrefusionWarps + kPrefusionWarps - 1);
  const int block_end = causal ? prefusion_imin(lk, shift + last_row + 1) : lk;  // keys any row of the block sees
  const int row_end = !row_ok ? 0 : causal ? prefusion_imin(lk, shift + i + 1) : lk;

  for (int c = lane; c < D; c += 32) {
    q_s[warp][c] = row_ok ? to_float(q[((b * lq + i) * hq + h) * D + c]) : 0.0f;
  }
  float m = -INFINITY, l = 0.0f, acc[kPer];
  for (int u = 0; u < kPer; ++u) acc[u] = 0.0f;

  for (int t0 = 0; t0 < block_end; t0 += kPrefusionTile) {
    __syncthreads();  // the previous tile is consumed (and q_s is written, first time)
    for (int idx = threadIdx.x; idx < kPrefusionTile * D; idx += blockDim.x) {
      const int j = idx / D, c = idx % D, key = t0 + j;
      const bool ok = key < block_end && (pad == nullptr || !pad[b * lk + key]);  // padded keys are never read
      const int64_t src = ((b * lk + key) * hkv + hk) * D + c;
      k_s[j][c] = ok ? to_float(k[src]) : 0.0f;
      v_s[j][c] = ok ? to_float(v[src]) : 0.0f;
    }
    __syncthreads();
    const int key = t0 + lane;
    bool visible = key < row_end && (pad == nullptr || !pad[b * lk + key]);
    float s = 0.0f;
    for (int c = 0; c < D; ++c) s += q_s[warp][c] * k_s[lane][c];
    s = visible ? s * scale_log2 : -INFINITY;
    const float m_new = fmaxf(m, warp_max(s));
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: no NaN
    const float p = visible ? exp2f(s - m_use) : 0.0f;
    const float alpha = exp2f(m - m_use);
    l = l * alpha + warp_sum(p);
    m = m_new;
    p_s[warp][lane] = p;
    __syncwarp();
    // Keys t0 .. t0 + n - 1 of the tile are within this row's horizon (warp-uniform). A key past
    // it is skipped, not multiplied by its zero probability: a later row may see it, so its V is
    // loaded as is, and 0 * NaN (or inf) would reach this row.
    const int n = prefusion_imin(kPrefusionTile, row_end - t0);
    for (int u = 0; u < kPer; ++u) {
      const int c = lane + 32 * u;
      if (c < D) {
        float a = acc[u] * alpha;
        if (n == kPrefusionTile) {
          for (int j = 0; j < kPrefusionTile; ++j) a += p_s[warp][j] * v_s[j][c];
        } else {
          for (int j = 0; j < n; ++j) a += p_s[warp][j] * v_s[j][c];
        }
        acc[u] = a;
      }
    }
    __syncwarp();
  }
  if (row_ok) {
    const float inv = m == -INFINITY ? 0.0f : 1.0f / l;  // no visible key: zeros; a NaN row stays NaN
    for (int u = 0; u < kPer; ++u) {
      const int c = lane + 32 * u;
      if (c < D) out[((b * lq + i) * hq + h) * D + c] = from_float<T>(acc[u] * inv);
    }
  }
}

inline Grid prefusion_grid(int64_t batch, int64_t lq, int64_t hq) {
  return {(lq + kPrefusionWarps - 1) / kPrefusionWarps * batch * hq};
}

template <typename T, int D>
inline void launch_prefusion_attention_d(const T* q, const T* k, const T* v, const bool* pad, T* out, int64_t batch,
                                         int64_t lq, int64_t lk, int64_t hq, int64_t hkv, bool causal,
                                         float scale_log2, cudaStream_t stream) {
  const dim3 grid(unsigned(prefusion_grid(batch, lq, hq).x));
  LMINI_LAUNCH((prefusion_attention_kernel<T, D>), grid, dim3(kPrefusionWarps * 32), 0, stream, q, k, v, pad, out,
               int(lq), int(lk), int(hq), int(hkv), causal, scale_log2);
}

}  // namespace lmini
