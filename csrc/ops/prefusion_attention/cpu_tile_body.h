// Tile body of the CPU pre-fusion attention (cpu.cpp).
//
// Included three times by cpu.cpp, inside three namespaces: for the build's default ISA, under
// `#pragma GCC target("avx2,fma")` and under the AVX-512 target, each with its own register
// width kW, blocking constants and in-register transpose `transpose_block` (kW x kW 32-bit
// words), so that the same loops are vectorised for whichever the running CPU supports (the
// extension is built without -march flags; lmini/cpu/isa.h picks the copy). No torch types
// here: plain pointers, fp32 math; exponentials are math.h's exp_nonpositive. Do not include
// it anywhere else.
//
// One call computes one task: batch b, key/value head hk, query rows [q0, q0 + bm) of every
// query head of the GQA group (rows ordered (query, head-in-group)), streaming the keys in
// tiles of kTileN with the online softmax. Per tile: K is transposed into kt (d x kTileN) with
// kW x kW register transposes straight from the strided rows (fp32), or from rows converted to
// fp32 first (fp16, bf16); V is read in place (fp32, no hidden key in the tile) or converted
// into vf. With bf16 inputs and `dp` (AVX-512 BF16, cpu_bf16.h) K is transposed as bf16 pairs
// and V interleaved by pairs of keys, and both products run as bf16 dot products. The next
// tile's K and V rows are prefetched while the current one is computed (rows of one head are
// Hkv * d elements apart: a page apart at the 7B shape, which the hardware prefetcher does
// not follow). The online softmax of a tile (softmax_tile) is also the AMX path's (cpu_amx.h,
// included after this file in the AVX-512 copy only).

// kW floats: one register of this copy's ISA (16 with AVX-512, 8 with AVX2, 4 with SSE). A GCC
// vector wider than the target's registers has no machine mode and every operation on it goes
// through the stack (16-float vectors in the AVX2 copy ran ~10x slower than SDPA on an
// AVX2-only AMD EPYC).
typedef float vecw __attribute__((vector_size(4 * kW)));
typedef float vecwu __attribute__((vector_size(4 * kW), aligned(4)));

static inline vecw loadw(const float* p) { return *reinterpret_cast<const vecwu*>(p); }
static inline void storew(float* p, vecw v) { *reinterpret_cast<vecwu*>(p) = v; }

// kt[c, j] = rows[j][c] for j < kTileN, c < w (32-bit words), kW x kW blocks in registers.
static inline void transpose_tile(const float* const* rows, int64_t w, float* kt) {
  const int64_t wfull = w - w % kW;
  for (int64_t j0 = 0; j0 < kTileN; j0 += kW) {
    for (int64_t c0 = 0; c0 < wfull; c0 += kW) transpose_block(rows + j0, c0, kt + c0 * kTileN + j0, kTileN);
    for (int64_t c = wfull; c < w; ++c)
      for (int64_t j = j0; j < j0 + kW; ++j) kt[c * kTileN + j] = rows[j][c];
  }
}

// s[r, :] = bias + sum_c q[r, c] * kt[c, :] over the kTileN keys, for R rows (q rows d apart).
// The tile's V vectors per row are taken VB at a time, so the R x VB accumulators, one K vector
// and R broadcast q values fit the registers (kScoreAcc accumulators at most).
template <int R>
static inline void score_rows(const float* q, const float* kt, const float* bias, float* s, int64_t d) {
  constexpr int V = kTileN / kW;  // vectors per tile row
  static_assert(kTileN % kW == 0, "the key tile is a whole number of vectors");
  constexpr int VB = R * V <= kScoreAcc ? V : (kScoreAcc / R > 0 ? kScoreAcc / R : 1);
  static_assert(V % VB == 0, "the accumulator block divides the tile row");
  for (int u0 = 0; u0 < V; u0 += VB) {
    vecw a[R][VB];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < VB; ++u) a[r][u] = loadw(bias + kW * (u0 + u));
    for (int64_t c = 0; c < d; ++c) {
      const float* kc = kt + c * kTileN + kW * u0;
      for (int u = 0; u < VB; ++u) {
        const vecw k = loadw(kc + kW * u);
        for (int r = 0; r < R; ++r) a[r][u] += q[r * d + c] * k;
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < VB; ++u) storew(s + r * kTileN + kW * (u0 + u), a[r][u]);
  }
}

// acc[r, :] += sum_{j < n} p[r, j] * v[j, :] for R rows (p rows kTileN apart, acc rows d apart,
// v rows ldv apart), kPvVecs * kW output columns per pass kept in registers. With Limited, row
// r takes only the keys j < lim[r] (its causal horizon in the tile): a key past it is skipped,
// not multiplied by a zero probability, so a NaN or inf in its V (visible to later rows)
// cannot reach row r.
template <int R, int U, bool Limited>
static inline int64_t pv_pass(const float* p, const float* v, int64_t ldv, float* acc, int64_t n, int64_t d,
                              int64_t c0, const int64_t* lim) {
  for (; c0 + U * kW <= d; c0 += U * kW) {
    vecw a[R][U];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) a[r][u] = loadw(acc + r * d + c0 + kW * u);
    for (int64_t j = 0; j < n; ++j) {
      vecw vv[U];
      for (int u = 0; u < U; ++u) vv[u] = loadw(v + j * ldv + c0 + kW * u);
      for (int r = 0; r < R; ++r) {
        if (Limited && j >= lim[r]) continue;
        const float pj = p[r * kTileN + j];
        for (int u = 0; u < U; ++u) a[r][u] += pj * vv[u];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) storew(acc + r * d + c0 + kW * u, a[r][u]);
  }
  return c0;
}

template <int R, bool Limited = false>
static inline void pv_rows(const float* p, const float* v, int64_t ldv, float* acc, int64_t n, int64_t d,
                           const int64_t* lim = nullptr) {
  int64_t c0 = pv_pass<R, kPvVecs, Limited>(p, v, ldv, acc, n, d, 0, lim);
  c0 = pv_pass<R, 1, Limited>(p, v, ldv, acc, n, d, c0, lim);
  for (; c0 < d; ++c0) {  // head dims that are not a multiple of kW
    for (int r = 0; r < R; ++r) {
      float t = acc[r * d + c0];
      const int64_t nr = Limited ? std::min(n, lim[r]) : n;
      for (int64_t j = 0; j < nr; ++j) t += p[r * kTileN + j] * v[j * ldv + c0];
      acc[r * d + c0] = t;
    }
  }
}

template <bool Limited>
static inline void pv_all(const float* s, const float* v, int64_t ldv, float* acc, int64_t rows, int64_t n,
                          int64_t d, const int64_t* lim) {
  int64_t r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock)
    pv_rows<kRowBlock, Limited>(s + r * kTileN, v, ldv, acc + r * d, n, d, Limited ? lim + r : nullptr);
  for (; r < rows; ++r) pv_rows<1, Limited>(s + r * kTileN, v, ldv, acc + r * d, n, d, Limited ? lim + r : nullptr);
}

// Max (a NaN lane wins) and sum over the kW lanes of a vector: AVX-512 reductions in that copy
// (cpu.cpp defines LMINI_LANES_AVX512 around it), elsewhere trees of depth log2(kW) (a serial
// scalar reduction of the lanes took half of the softmax's time).
#ifdef LMINI_LANES_AVX512
static inline float lanes_max(vecw v) {
  const __m512 x = (__m512)v;
  return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0 ? NAN : _mm512_reduce_max_ps(x);
}
static inline float lanes_sum(vecw v) { return _mm512_reduce_add_ps((__m512)v); }
#else
static inline float lanes_max(vecw v) {
  float a[kW];
  std::memcpy(a, &v, sizeof(a));
  for (int h = kW / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) a[l] = (a[l + h] > a[l]) | (a[l + h] != a[l + h]) ? a[l + h] : a[l];
  return a[0];
}
static inline float lanes_sum(vecw v) {
  float a[kW];
  std::memcpy(a, &v, sizeof(a));
  for (int h = kW / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) a[l] += a[l + h];
  return a[0];
}
#endif

// Online softmax of one score tile s (rows x kTileN, fp32), in place: hidden keys (kbias -inf:
// padded, or past the tile's end) and, when causal, the keys past a row's horizon become -inf,
// the other scores are multiplied by sscale (1 where they were scaled already); then per row the
// new max, the rescale of the running sum lrow and of the accumulators acc (rows x d), and P.
// last0: the tile's last visible key of row 0 (causal); row r's is last0 + r / g.
static inline void softmax_tile(float* s, int64_t rows, const float* kbias, float sscale, bool causal,
                                int64_t last0, int64_t g, float* mrow, float* lrow, float* acc, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kTileN;
    // Hidden keys by select, not by the -inf bias alone: a NaN query times a zeroed key is NaN,
    // and a query that sees no key gives zeros whatever it holds.
    for (int64_t j = 0; j < kTileN; ++j) sr[j] = kbias[j] == 0.0f ? sr[j] * sscale : -INFINITY;
    if (causal) {
      const int64_t last = last0 + r / g;  // last visible key of the tile
      for (int64_t j = std::max<int64_t>(last + 1, 0); j < kTileN; ++j) sr[j] = -INFINITY;
    }
    // The max keeps a NaN score (a NaN query, key or scale): the row's output is then NaN. Per
    // lane first (kW-float vectors), then over the lanes.
    vecw lane = loadw(sr);
    for (int64_t j = kW; j < kTileN; j += kW) {
      const vecw x = loadw(sr + j);
      lane = (x > lane) | (x != x) ? x : lane;
    }
    const float mx = lanes_max(lane);
    if (mx == -INFINITY) {  // nothing visible in this tile for this row: P = 0
      for (int64_t j = 0; j < kTileN; ++j) sr[j] = 0.0f;
      continue;
    }
    const float m_new = mx > mrow[r] || mx != mx ? mx : mrow[r];
    const float alpha = exp_nonpositive(mrow[r] - m_new);
    for (int64_t j = 0; j < kTileN; ++j) sr[j] = exp_nonpositive(sr[j] - m_new);
    vecw part = loadw(sr);
    for (int64_t j = kW; j < kTileN; j += kW) part += loadw(sr + j);
    const float sum = lanes_sum(part);
    lrow[r] = lrow[r] * alpha + sum;
    mrow[r] = m_new;
    if (alpha != 1.0f) {
      float* ar = acc + r * d;
      for (int64_t c = 0; c < d; ++c) ar[c] *= alpha;
    }
  }
}

// out rows of a finished block: acc / lrow per row (rows ordered (query, head-in-group) from
// query q0 of key/value head hk); a row with no visible key (mrow still -inf) gives zeros.
template <typename T>
static inline void write_rows(const Problem<T>& pr, int64_t b, int64_t hk, int64_t q0, int64_t rows,
                              const float* acc, const float* mrow, const float* lrow) {
  const int64_t d = pr.d, g = pr.group;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = q0 + r / g, h = hk * g + r % g;
    T* dst = pr.out + ((b * pr.lq + i) * pr.hq + h) * d;
    const float inv = mrow[r] == -INFINITY ? 0.0f : 1.0f / lrow[r];
    for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<T>(acc[r * d + c] * inv);
  }
}

template <typename T>
static inline void prefetch_rows(const T* base, int64_t stride, int64_t n, int64_t d) {
  const int64_t bytes = d * int64_t(sizeof(T));
  for (int64_t j = 0; j < n; ++j) {
    const char* row = reinterpret_cast<const char*>(base + j * stride);
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o);
  }
}

template <typename T>
static void attention_task(const Problem<T>& pr, int64_t b, int64_t hk, int64_t q0, int64_t bm, float* work,
                           HalfRowFn half_fn, bool dp) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  const int64_t d = pr.d, g = pr.group, rows = bm * g;
  const int64_t w = d / 2;  // bf16 pair words per row (dp only: d % 32 == 0)
  // Scratch (fp32 unless dp): Q rows (pre-scaled; dp: raw bf16 pairs), K tile transposed
  // (d x kTileN), V tile (kTileN x d), K rows converted (kTileN x d), the score tile, P as bf16
  // pairs (dp), the output accumulators, the per-row softmax state and a row of zeros.
  float* qf = work;
  float* kt = qf + rows * d;
  float* vf = kt + d * kTileN;
  float* kc = vf + kTileN * d;
  float* s = kc + kTileN * d;
  float* pwf = s + rows * kTileN;
  float* acc = pwf + rows * kTileN / 2;
  float* mrow = acc + rows * d;
  float* lrow = mrow + rows;
  float* zero = lrow + rows;
  // per-row key limits of a diagonal tile, on an 8-byte boundary (work has 2 floats of slack)
  int64_t* lim = reinterpret_cast<int64_t*>(zero + d + ((zero + d - work) & 1));
  alignas(64) float kbias[kTileN];
  const float* krows[kTileN];
  const T* vrows[kTileN];

  for (int64_t c = 0; c < d; ++c) zero[c] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = q0 + r / g, h = hk * g + r % g;
    const T* src = pr.q + b * pr.sqb + i * pr.sql + h * pr.sqh;
    if (dp) {
      std::memcpy(qf + r * w, src, d * sizeof(T));
    } else {
      convert_row(src, qf + r * d, d, half_fn);
      for (int64_t c = 0; c < d; ++c) qf[r * d + c] *= pr.scale;
    }
    for (int64_t c = 0; c < d; ++c) acc[r * d + c] = 0.0f;
    mrow[r] = -INFINITY;
    lrow[r] = 0.0f;
  }
  const int64_t offset = pr.lk - pr.lq;  // query i is position offset + i
  const int64_t key_end = pr.causal ? std::min(pr.lk, offset + q0 + bm) : pr.lk;
  const bool* pad = pr.pad == nullptr ? nullptr : pr.pad + b * pr.lk;
  const T* kbase = pr.k + b * pr.skb + hk * pr.skh;
  const T* vbase = pr.v + b * pr.svb + hk * pr.svh;
  prefetch_rows(kbase, pr.skl, std::min(kTileN, key_end), d);
  prefetch_rows(vbase, pr.svl, std::min(kTileN, key_end), d);

  for (int64_t k0 = 0; k0 < key_end; k0 += kTileN) {
    const int64_t n = std::min<int64_t>(kTileN, key_end - k0);
    bool any_key = false, all_keys = true;
    for (int64_t j = 0; j < kTileN; ++j) {
      const bool ok = j < n && (pad == nullptr || !pad[k0 + j]);
      kbias[j] = ok ? 0.0f : -INFINITY;
      any_key |= ok;
      all_keys &= ok || j >= n;
    }
    if (!any_key) continue;
    if (k0 + kTileN < key_end) {
      const int64_t nn = std::min(kTileN, key_end - k0 - kTileN);
      prefetch_rows(kbase + (k0 + kTileN) * pr.skl, pr.skl, nn, d);
      prefetch_rows(vbase + (k0 + kTileN) * pr.svl, pr.svl, nn, d);
    }
    // A padded key, or one past the tile's end, is never read: its rows are the zero row.
    for (int64_t j = 0; j < kTileN; ++j) {
      const bool ok = kbias[j] == 0.0f;
      vrows[j] = ok ? vbase + (k0 + j) * pr.svl : reinterpret_cast<const T*>(zero);
      if constexpr (kF32) {
        krows[j] = ok ? kbase + (k0 + j) * pr.skl : zero;
      } else if (dp) {
        krows[j] = ok ? reinterpret_cast<const float*>(kbase + (k0 + j) * pr.skl) : zero;
      } else {
        if (ok) convert_row(kbase + (k0 + j) * pr.skl, kc + j * d, d, half_fn);
        krows[j] = ok ? kc + j * d : zero;
      }
    }
    transpose_tile(krows, dp ? w : d, kt);
    int64_t r = 0;
    if (dp) {
#if LMINI_HAVE_BF16_KERNELS
      bf16dp::scores(reinterpret_cast<const uint32_t*>(qf), rows, reinterpret_cast<const uint32_t*>(kt), w,
                     pr.scale, kbias, s);
#endif
    } else {
      // S[r, :] = kbias + sum_c q[r, c] * Kt[c, :], kRowBlock rows at a time: the accumulators
      // stay in vector registers, each K vector load feeds kRowBlock FMAs.
      for (; r + kRowBlock <= rows; r += kRowBlock) score_rows<kRowBlock>(qf + r * d, kt, kbias, s + r * kTileN, d);
      for (; r < rows; ++r) score_rows<1>(qf + r * d, kt, kbias, s + r * kTileN, d);
    }
    softmax_tile(s, rows, kbias, 1.0f, pr.causal, offset + q0 - k0, g, mrow, lrow, acc, d);
    // acc += P V. On a tile that crosses the first row's causal horizon, each row stops at its
    // own horizon (fp32 V, key by key).
    const bool limited = pr.causal && offset + q0 - k0 + 1 < n;
    if (dp && !limited) {
#if LMINI_HAVE_BF16_KERNELS
      bf16dp::pack_v(reinterpret_cast<const uint16_t* const*>(vrows), (n + 1) / 2, d,
                     reinterpret_cast<uint32_t*>(vf));
      bf16dp::round_p(s, rows, reinterpret_cast<uint32_t*>(pwf));
      bf16dp::pv(reinterpret_cast<const uint32_t*>(pwf), rows, reinterpret_cast<const uint32_t*>(vf), acc,
                 (n + 1) / 2, d);
#endif
      continue;
    }
    const float* v = vf;
    int64_t ldv = d;
    if (kF32 && all_keys) {
      v = reinterpret_cast<const float*>(vbase + k0 * pr.svl);
      ldv = pr.svl;
    } else {
      for (int64_t j = 0; j < n; ++j) convert_row(vrows[j], vf + j * d, d, half_fn);
    }
    if (limited) {
      for (r = 0; r < rows; ++r) lim[r] = std::max<int64_t>(0, std::min(n, offset + q0 + r / g - k0 + 1));
      pv_all<true>(s, v, ldv, acc, rows, n, d, lim);
    } else {
      pv_all<false>(s, v, ldv, acc, rows, n, d, nullptr);
    }
  }
  write_rows(pr, b, hk, q0, rows, acc, mrow, lrow);
}
