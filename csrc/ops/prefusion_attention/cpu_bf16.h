// AVX-512 BF16 kernels of the CPU pre-fusion attention (cpu.cpp): bf16 inputs multiplied as
// bf16 pairs with vdpbf16ps (two products per fp32 lane, accumulated in fp32), twice the
// multiply rate of the fp32 FMA path and no bf16 -> fp32 conversion of K and V. Used for bf16
// q/k/v when the CPU has avx512_bf16, the AVX-512 copy is chosen and d is a multiple of 32.
//
// Layouts (one 32-bit word = two bf16, the lower one first, as vdpbf16ps pairs them):
//   qw: rows x W words, W = d / 2, the raw bf16 query rows (unscaled; the scale multiplies S);
//   kt: W x kTileN words, kt[w][j] = (k[j][2w], k[j][2w + 1]) (the K tile transposed as words);
//   pw: rows x kTileN / 2 words, pw[r][t] = (p[r][2t], p[r][2t + 1]) rounded to bf16;
//   vp: kTileN / 2 x d words, vp[t][c] = (v[2t][c], v[2t + 1][c]).
// Functions, not inlined into the AVX-512 copy: their target adds avx512bf16/bw, which that
// copy must not assume. Included once by cpu.cpp, outside the per-ISA namespaces.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#include <cstdint>

#define LMINI_HAVE_BF16_KERNELS 1
#define LMINI_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")))

namespace lmini::cpu::bf16dp {

constexpr int64_t kTile = 64;  // keys per tile (cpu.cpp's kTileN)

inline bool cpu_has_avx512bf16() {
  static const bool ok = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return ok;
}

LMINI_TARGET_AVX512BF16 static inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

// s[r, :] = scale * sum_w qw[r, w] . kt[w, :] + bias for R rows, the 64 keys in 4 registers.
template <int R>
LMINI_TARGET_AVX512BF16 static inline void score_block(const uint32_t* qw, const uint32_t* kt, int64_t W,
                                                       float scale, const float* bias, float* s) {
  __m512 a[R][4];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < 4; ++u) a[r][u] = _mm512_setzero_ps();
  for (int64_t w = 0; w < W; ++w) {
    const uint32_t* kw = kt + w * kTile;
    const __m512i k0 = _mm512_loadu_si512(kw), k1 = _mm512_loadu_si512(kw + 16);
    const __m512i k2 = _mm512_loadu_si512(kw + 32), k3 = _mm512_loadu_si512(kw + 48);
    for (int r = 0; r < R; ++r) {
      const __m512bh qb = as_bh(_mm512_set1_epi32(int(qw[r * W + w])));
      a[r][0] = _mm512_dpbf16_ps(a[r][0], qb, as_bh(k0));
      a[r][1] = _mm512_dpbf16_ps(a[r][1], qb, as_bh(k1));
      a[r][2] = _mm512_dpbf16_ps(a[r][2], qb, as_bh(k2));
      a[r][3] = _mm512_dpbf16_ps(a[r][3], qb, as_bh(k3));
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < 4; ++u)
      _mm512_storeu_ps(s + r * kTile + 16 * u, _mm512_fmadd_ps(a[r][u], sc, _mm512_loadu_ps(bias + 16 * u)));
}

LMINI_TARGET_AVX512BF16 inline void scores(const uint32_t* qw, int64_t rows, const uint32_t* kt, int64_t W,
                                           float scale, const float* bias, float* s) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) score_block<6>(qw + r * W, kt, W, scale, bias, s + r * kTile);
  switch (rows - r) {
    case 5: score_block<5>(qw + r * W, kt, W, scale, bias, s + r * kTile); break;
    case 4: score_block<4>(qw + r * W, kt, W, scale, bias, s + r * kTile); break;
    case 3: score_block<3>(qw + r * W, kt, W, scale, bias, s + r * kTile); break;
    case 2: score_block<2>(qw + r * W, kt, W, scale, bias, s + r * kTile); break;
    case 1: score_block<1>(qw + r * W, kt, W, scale, bias, s + r * kTile); break;
    default: break;
  }
}

// acc[r, c0 .. c0 + 16U) += sum_t pw[r, t] . vp[t, c0 ..] over npairs key pairs, for R rows:
// one strip of U vectors of columns, R x U accumulators.
template <int R, int U>
LMINI_TARGET_AVX512BF16 static inline void pv_strip(const uint32_t* pw, const uint32_t* vp, float* acc,
                                                    int64_t npairs, int64_t d, int64_t c0) {
  __m512 a[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) a[r][u] = _mm512_loadu_ps(acc + r * d + c0 + 16 * u);
  for (int64_t t = 0; t < npairs; ++t) {
    const uint32_t* vr = vp + t * d + c0;
    __m512i v[U];
    for (int u = 0; u < U; ++u) v[u] = _mm512_loadu_si512(vr + 16 * u);
    for (int r = 0; r < R; ++r) {
      const __m512bh pb = as_bh(_mm512_set1_epi32(int(pw[r * (kTile / 2) + t])));
      for (int u = 0; u < U; ++u) a[r][u] = _mm512_dpbf16_ps(a[r][u], pb, as_bh(v[u]));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) _mm512_storeu_ps(acc + r * d + c0 + 16 * u, a[r][u]);
}

// acc[r, :] += sum_t pw[r, t] . vp[t, :] over npairs key pairs, for R rows; d % 32 == 0:
// strips of 64 columns, then one of 32.
template <int R>
LMINI_TARGET_AVX512BF16 static inline void pv_block(const uint32_t* pw, const uint32_t* vp, float* acc,
                                                    int64_t npairs, int64_t d) {
  int64_t c0 = 0;
  for (; c0 + 64 <= d; c0 += 64) pv_strip<R, 4>(pw, vp, acc, npairs, d, c0);
  for (; c0 < d; c0 += 32) pv_strip<R, 2>(pw, vp, acc, npairs, d, c0);
}

LMINI_TARGET_AVX512BF16 inline void pv(const uint32_t* pw, int64_t rows, const uint32_t* vp, float* acc,
                                       int64_t npairs, int64_t d) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) pv_block<6>(pw + r * (kTile / 2), vp, acc + r * d, npairs, d);
  switch (rows - r) {
    case 5: pv_block<5>(pw + r * (kTile / 2), vp, acc + r * d, npairs, d); break;
    case 4: pv_block<4>(pw + r * (kTile / 2), vp, acc + r * d, npairs, d); break;
    case 3: pv_block<3>(pw + r * (kTile / 2), vp, acc + r * d, npairs, d); break;
    case 2: pv_block<2>(pw + r * (kTile / 2), vp, acc + r * d, npairs, d); break;
    case 1: pv_block<1>(pw + r * (kTile / 2), vp, acc + r * d, npairs, d); break;
    default: break;
  }
}

// pw[r, :] = bf16(p[r, :]) for the rows' 64 probabilities (round to nearest even).
LMINI_TARGET_AVX512BF16 inline void round_p(const float* p, int64_t rows, uint32_t* pw) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = p + r * kTile;
    for (int h = 0; h < 2; ++h) {
      const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(pr + 32 * h + 16), _mm512_loadu_ps(pr + 32 * h));
      _mm512_storeu_si512(pw + r * (kTile / 2) + 16 * h, (__m512i)b);
    }
  }
}

// vp[t, :] = interleave(rows[2t], rows[2t + 1]) for t < npairs; rows[j] are bf16 rows of d
// (a zero row for a hidden key or past the tile's end). Also the VNNI layout of V for the AMX
// path (cpu_amx.h), which takes any even d.
LMINI_TARGET_AVX512BF16 inline void pack_v(const uint16_t* const* rows, int64_t npairs, int64_t d, uint32_t* vp) {
  for (int64_t t = 0; t < npairs; ++t) {
    const uint16_t *a = rows[2 * t], *b = rows[2 * t + 1];
    uint32_t* dst = vp + t * d;
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c)));
      const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + c)));
      _mm512_storeu_si512(dst + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    for (; c < d; ++c) dst[c] = uint32_t(a[c]) | uint32_t(b[c]) << 16;  // d not a multiple of 16 (AMX path)
  }
}

}  // namespace lmini::cpu::bf16dp
#endif
