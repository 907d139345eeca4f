// AMX path of the CPU pre-fusion attention (cpu.cpp), bf16 inputs: both products as oneDNN
// brgemm micro-kernels through torch's cpublas (AMX tiles, fp32 accumulation), the online
// softmax of the tile body (softmax_tile) in fp32 between them.
//
// Included by cpu.cpp inside the AVX-512 copy's namespace only, after cpu_tile_body.h (so the
// AMX path runs only where that copy runs: LMINI_CPU_ISA=avx2|base turns it off too). No torch
// types here: the products go through cpu.cpp's amx_gemm (brgemm with B in VNNI pairs, that
// is B[K/2][ldb][2]: the same word layouts as cpu_bf16.h's kt and vp).
//
// One call computes one task: batch b, key/value head hk, query rows [qa, qz) in blocks of bm
// queries (every query head of the GQA group, rows ordered (query, head-in-group)). First the
// keys the task needs are packed once, tile by tile (kTileN keys): K^T as bf16 pairs (W x
// kTileN words, W = d / 2) and V as pairs of keys (kTileN / 2 x d words), a hidden key (padded,
// or past the end) as a zero row, never read. Then per query block and key tile: S = Q K^T
// (brgemm, rows x kTileN fp32), softmax_tile (scale, hidden and causal keys by select), P
// rounded to bf16, acc += P V (brgemm). 0 * NaN: a tile whose V has a non-finite value in a key
// past the block's first causal horizon takes the fp32 per-row-limited P V of the tile body
// instead (pv_all<true>), so that value cannot reach the rows that may not see it.

// Per-thread scratch of the AMX path, sized once per parallel_for chunk for a head's keys.
struct AmxScratch {
  std::vector<uint32_t> kp, vp, qw, pw;
  std::vector<float> kb, s, acc, m, l, vf, zero;
  std::vector<int64_t> lim, bad_last;
  std::vector<char> any;
  AmxScratch(int64_t tiles, int64_t rows, int64_t d)
      : kp(tiles * (d / 2) * kTileN),
        vp(tiles * (kTileN / 2) * d),
        qw(rows * (d / 2)),
        pw(rows * (kTileN / 2)),
        kb(tiles * kTileN),
        s(rows * kTileN),
        acc(rows * d),
        m(rows),
        l(rows),
        vf(kTileN * d),
        zero(d, 0.0f),
        lim(rows),
        bad_last(tiles),
        any(tiles) {}
};

// True when a bf16 row (W words of two values) holds an inf or a NaN: a value whose exponent
// bits are all set. 32-bit words, so that the loop vectorises without AVX-512 BW.
static inline bool row_nonfinite(const uint32_t* row, int64_t W) {
  uint32_t bad = 0;
  for (int64_t c = 0; c < W; ++c) {
    const uint32_t x = row[c];
    bad |= ((x & 0x7F80u) == 0x7F80u) | ((x & 0x7F800000u) == 0x7F800000u);
  }
  return bad != 0;
}

static void attention_task_amx(const Problem<c10::BFloat16>& pr, int64_t b, int64_t hk, int64_t qa, int64_t qz,
                               int64_t bm, AmxScratch& w, HalfRowFn half_fn) {
  using T = c10::BFloat16;
  const int64_t d = pr.d, g = pr.group, W = d / 2;
  const int64_t offset = pr.lk - pr.lq;  // query i is position offset + i
  const int64_t key_hi = pr.causal ? std::min(pr.lk, offset + qz) : pr.lk;
  const int64_t tiles = (key_hi + kTileN - 1) / kTileN;
  const bool* pad = pr.pad == nullptr ? nullptr : pr.pad + b * pr.lk;
  const T* kbase = pr.k + b * pr.skb + hk * pr.skh;
  const T* vbase = pr.v + b * pr.svb + hk * pr.svh;
  const float* zero = w.zero.data();
  const float* krows[kTileN];
  const uint16_t* vrows[kTileN];

  // Pack the keys [0, key_hi) once for every query block and head of the task.
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t k0 = t * kTileN, n = std::min(kTileN, key_hi - k0);
    float* kb = w.kb.data() + t * kTileN;
    bool any = false;
    int64_t bad = -1;  // the last key of the tile with a non-finite V
    for (int64_t j = 0; j < kTileN; ++j) {
      const bool ok = j < n && (pad == nullptr || !pad[k0 + j]);
      kb[j] = ok ? 0.0f : -INFINITY;
      any |= ok;
      krows[j] = ok ? reinterpret_cast<const float*>(kbase + (k0 + j) * pr.skl) : zero;
      vrows[j] = ok ? reinterpret_cast<const uint16_t*>(vbase + (k0 + j) * pr.svl)
                    : reinterpret_cast<const uint16_t*>(zero);
      if (ok) bad = row_nonfinite(reinterpret_cast<const uint32_t*>(vrows[j]), W) ? j : bad;
    }
    w.any[t] = any;
    w.bad_last[t] = bad;
    if (!any) continue;
    transpose_tile(krows, W, reinterpret_cast<float*>(w.kp.data() + t * W * kTileN));
    bf16dp::pack_v(vrows, kTileN / 2, d, w.vp.data() + t * (kTileN / 2) * d);
  }

  float* s = w.s.data();
  float* acc = w.acc.data();
  float* mrow = w.m.data();
  float* lrow = w.l.data();
  for (int64_t q0 = qa; q0 < qz; q0 += bm) {
    const int64_t nq = std::min(bm, qz - q0), rows = nq * g;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = q0 + r / g, h = hk * g + r % g;
      std::memcpy(w.qw.data() + r * W, pr.q + b * pr.sqb + i * pr.sql + h * pr.sqh, d * sizeof(T));
      for (int64_t c = 0; c < d; ++c) acc[r * d + c] = 0.0f;
      mrow[r] = -INFINITY;
      lrow[r] = 0.0f;
    }
    const int64_t key_end = pr.causal ? std::min(pr.lk, offset + q0 + nq) : pr.lk;
    for (int64_t t = 0; t * kTileN < key_end; ++t) {
      if (!w.any[t]) continue;
      const int64_t k0 = t * kTileN;
      const float* kb = w.kb.data() + t * kTileN;
      amx_gemm(rows, kTileN, d, d, kTileN, kTileN, false, w.qw.data(), w.kp.data() + t * W * kTileN, s);
      softmax_tile(s, rows, kb, pr.scale, pr.causal, offset + q0 - k0, g, mrow, lrow, acc, d);
      const int64_t seen0 = offset + q0 - k0 + 1;  // keys of the tile the block's first row sees
      if (pr.causal && w.bad_last[t] >= seen0) {
        // A non-finite V past a row's horizon: the fp32 P V, each row up to its own horizon.
        const int64_t n = std::min(kTileN, key_end - k0);
        float* vf = w.vf.data();
        for (int64_t j = 0; j < n; ++j) {
          const T* src = kb[j] == 0.0f ? vbase + (k0 + j) * pr.svl : reinterpret_cast<const T*>(zero);
          convert_row(src, vf + j * d, d, half_fn);
        }
        int64_t* lim = w.lim.data();
        for (int64_t r = 0; r < rows; ++r) lim[r] = std::max<int64_t>(0, std::min(n, seen0 + r / g));
        pv_all<true>(s, vf, d, acc, rows, n, d, lim);
        continue;
      }
      bf16dp::round_p(s, rows, w.pw.data());
      amx_gemm(rows, d, kTileN, kTileN, d, d, true, w.pw.data(), w.vp.data() + t * (kTileN / 2) * d, acc);
    }
    write_rows(pr, b, hk, q0, rows, acc, mrow, lrow);
  }
}
