// Tile body of the CPU pre-fusion attention (cpu.cpp).
//
// Included three times by cpu.cpp, inside three namespaces: for the build's default ISA, under
// `#pragma GCC target("avx2,fma")` and under the AVX-512 target, each with its own register
// width kW and blocking constants, so that the same loops are vectorised for whichever the
// running CPU supports (the extension is built without -march flags; lmini/cpu/isa.h picks
// the copy). No torch types here: plain pointers, fp32 math; exponentials are math.h's
// exp_nonpositive. Do not include it anywhere else.
//
// One call computes one task: batch b, key/value head hk, query rows [q0, q0 + bm) of every
// query head of the GQA group (rows ordered (query, head-in-group)), streaming the keys in
// tiles of kTileN with the online softmax.

// kW floats: one register of this copy's ISA (16 with AVX-512, 8 with AVX2, 4 with SSE). A GCC
// vector wider than the target's registers has no machine mode and every operation on it goes
// through the stack (16-float vectors in the AVX2 copy ran ~10x slower than SDPA on an
// AVX2-only AMD EPYC).
typedef float vecw __attribute__((vector_size(4 * kW)));
typedef float vecwu __attribute__((vector_size(4 * kW), aligned(4)));

static inline vecw loadw(const float* p) { return *reinterpret_cast<const vecwu*>(p); }
static inline void storew(float* p, vecw v) { *reinterpret_cast<vecwu*>(p) = v; }

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

// acc[r, :] += sum_{j < n} p[r, j] * v[j, :] for R rows (p rows 64 apart, acc rows d apart),
// 2 * kW output columns per pass kept in registers. With Limited, row r takes only the keys
// j < lim[r] (its causal horizon in the tile): a key past it is skipped, not multiplied by a
// zero probability, so a NaN or inf in its V (visible to later rows) cannot reach row r.
template <int R, bool Limited = false>
static inline void pv_rows(const float* p, const float* v, float* acc, int64_t n, int64_t d,
                           const int64_t* lim = nullptr) {
  int64_t c0 = 0;
  for (; c0 + 2 * kW <= d; c0 += 2 * kW) {
    vecw a[R][2];
    for (int r = 0; r < R; ++r) {
      a[r][0] = loadw(acc + r * d + c0);
      a[r][1] = loadw(acc + r * d + c0 + kW);
    }
    for (int64_t j = 0; j < n; ++j) {
      const vecw v0 = loadw(v + j * d + c0), v1 = loadw(v + j * d + c0 + kW);
      for (int r = 0; r < R; ++r) {
        if (Limited && j >= lim[r]) continue;
        const float pj = p[r * kTileN + j];
        a[r][0] += pj * v0;
        a[r][1] += pj * v1;
      }
    }
    for (int r = 0; r < R; ++r) {
      storew(acc + r * d + c0, a[r][0]);
      storew(acc + r * d + c0 + kW, a[r][1]);
    }
  }
  for (; c0 + kW <= d; c0 += kW) {
    vecw a[R];
    for (int r = 0; r < R; ++r) a[r] = loadw(acc + r * d + c0);
    for (int64_t j = 0; j < n; ++j) {
      const vecw v0 = loadw(v + j * d + c0);
      for (int r = 0; r < R; ++r)
        if (!Limited || j < lim[r]) a[r] += p[r * kTileN + j] * v0;
    }
    for (int r = 0; r < R; ++r) storew(acc + r * d + c0, a[r]);
  }
  for (; c0 < d; ++c0) {  // head dims that are not a multiple of kW
    for (int r = 0; r < R; ++r) {
      float t = acc[r * d + c0];
      const int64_t nr = Limited ? std::min(n, lim[r]) : n;
      for (int64_t j = 0; j < nr; ++j) t += p[r * kTileN + j] * v[j * d + c0];
      acc[r * d + c0] = t;
    }
  }
}

template <typename T>
static void attention_task(const Problem<T>& pr, int64_t b, int64_t hk, int64_t q0, int64_t bm, float* work,
                           HalfRowFn half_fn) {
  const int64_t d = pr.d, g = pr.group, rows = bm * g;
  // Scratch (fp32): Q rows (pre-scaled), K tile transposed (d x kTileN), V tile (kTileN x d),
  // the score tile, the output accumulators and the per-row softmax state.
  float* qf = work;
  float* kt = qf + rows * d;
  float* vf = kt + d * kTileN;
  float* s = vf + kTileN * d;
  float* acc = s + rows * kTileN;
  float* mrow = acc + rows * d;
  float* lrow = mrow + rows;
  float* row = lrow + rows;  // one converted K row
  // per-row key limits of a diagonal tile, on an 8-byte boundary (work has 2 floats of slack)
  int64_t* lim = reinterpret_cast<int64_t*>(row + d + ((row + d - work) & 1));
  alignas(64) float kbias[kTileN];

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = q0 + r / g, h = hk * g + r % g;
    const T* src = pr.q + b * pr.sqb + i * pr.sql + h * pr.sqh;
    convert_row(src, qf + r * d, d, half_fn);
    for (int64_t c = 0; c < d; ++c) qf[r * d + c] *= pr.scale;
    for (int64_t c = 0; c < d; ++c) acc[r * d + c] = 0.0f;
    mrow[r] = -INFINITY;
    lrow[r] = 0.0f;
  }
  const int64_t offset = pr.lk - pr.lq;  // query i is position offset + i
  const int64_t key_end = pr.causal ? std::min(pr.lk, offset + q0 + bm) : pr.lk;
  const bool* pad = pr.pad == nullptr ? nullptr : pr.pad + b * pr.lk;

  for (int64_t k0 = 0; k0 < key_end; k0 += kTileN) {
    const int64_t n = std::min<int64_t>(kTileN, key_end - k0);
    bool any_key = false;
    for (int64_t j = 0; j < kTileN; ++j) {
      const bool ok = j < n && (pad == nullptr || !pad[k0 + j]);
      kbias[j] = ok ? 0.0f : -INFINITY;
      any_key |= ok;
    }
    if (!any_key) continue;
    for (int64_t j = 0; j < n; ++j) {
      if (kbias[j] != 0.0f) {  // a padded key is never read: whatever its K and V hold changes nothing
        for (int64_t c = 0; c < d; ++c) kt[c * kTileN + j] = 0.0f;
        for (int64_t c = 0; c < d; ++c) vf[j * d + c] = 0.0f;
        continue;
      }
      const T* ks = pr.k + b * pr.skb + (k0 + j) * pr.skl + hk * pr.skh;
      const T* vs = pr.v + b * pr.svb + (k0 + j) * pr.svl + hk * pr.svh;
      convert_row(ks, row, d, half_fn);
      for (int64_t c = 0; c < d; ++c) kt[c * kTileN + j] = row[c];
      convert_row(vs, vf + j * d, d, half_fn);
    }
    for (int64_t j = n; j < kTileN; ++j) {  // finite filler: 0 * garbage could be NaN
      for (int64_t c = 0; c < d; ++c) kt[c * kTileN + j] = 0.0f;
    }
    // Scores: S[r, :] = kbias + sum_c q[r, c] * Kt[c, :], kRowBlock rows at a time: the
    // kRowBlock x 64 accumulators stay in vector registers, each K vector load feeds
    // kRowBlock FMAs.
    int64_t r = 0;
    for (; r + kRowBlock <= rows; r += kRowBlock) score_rows<kRowBlock>(qf + r * d, kt, kbias, s + r * kTileN, d);
    for (; r < rows; ++r) score_rows<1>(qf + r * d, kt, kbias, s + r * kTileN, d);
    // Online softmax: per row, the new max, the rescale factor of the running sums, P.
    for (r = 0; r < rows; ++r) {
      float* sr = s + r * kTileN;
      // Hidden keys (padded, or past the tile's end) by select, not by the -inf bias alone: a NaN
      // query times a zeroed key is NaN, and a query that sees no key gives zeros whatever it holds.
      for (int64_t j = 0; j < kTileN; ++j) sr[j] = kbias[j] == 0.0f ? sr[j] : -INFINITY;
      if (pr.causal) {
        const int64_t last = offset + q0 + r / g - k0;  // last visible key of the tile
        for (int64_t j = std::max<int64_t>(last + 1, 0); j < kTileN; ++j) sr[j] = -INFINITY;
      }
      // The max keeps a NaN score (a NaN query, key or scale): the row's output is then NaN.
      float mx = -INFINITY;
      for (int64_t j = 0; j < kTileN; ++j) mx = sr[j] > mx || sr[j] != sr[j] ? sr[j] : mx;
      if (mx == -INFINITY) {  // nothing visible in this tile for this row: P = 0
        for (int64_t j = 0; j < kTileN; ++j) sr[j] = 0.0f;
        continue;
      }
      const float m_new = mx > mrow[r] || mx != mx ? mx : mrow[r];
      const float alpha = exp_nonpositive(mrow[r] - m_new);
      float sum = 0.0f;
      for (int64_t j = 0; j < kTileN; ++j) {
        sr[j] = exp_nonpositive(sr[j] - m_new);
        sum += sr[j];
      }
      lrow[r] = lrow[r] * alpha + sum;
      mrow[r] = m_new;
      if (alpha != 1.0f) {
        float* ar = acc + r * d;
        for (int64_t c = 0; c < d; ++c) ar[c] *= alpha;
      }
    }
    // acc += P V, kPvRowBlock rows at a time, 2 * kW output columns per pass in registers. On a
    // tile that crosses the first row's causal horizon, each row stops at its own horizon.
    const bool limited = pr.causal && offset + q0 - k0 + 1 < n;
    if (limited) {
      for (r = 0; r < rows; ++r) lim[r] = std::max<int64_t>(0, std::min(n, offset + q0 + r / g - k0 + 1));
      for (r = 0; r + kPvRowBlock <= rows; r += kPvRowBlock)
        pv_rows<kPvRowBlock, true>(s + r * kTileN, vf, acc + r * d, n, d, lim + r);
      for (; r < rows; ++r) pv_rows<1, true>(s + r * kTileN, vf, acc + r * d, n, d, lim + r);
    } else {
      for (r = 0; r + kPvRowBlock <= rows; r += kPvRowBlock) pv_rows<kPvRowBlock>(s + r * kTileN, vf, acc + r * d, n, d);
      for (; r < rows; ++r) pv_rows<1>(s + r * kTileN, vf, acc + r * d, n, d);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = q0 + r / g, h = hk * g + r % g;
    T* dst = pr.out + ((b * pr.lq + i) * pr.hq + h) * d;
    const float inv = mrow[r] == -INFINITY ? 0.0f : 1.0f / lrow[r];  // no visible key: zeros
    for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<T>(acc[r * d + c] * inv);
  }
}
