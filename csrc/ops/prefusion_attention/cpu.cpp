// CPU implementation of lmini::prefusion_attention: flash-attention forward in fp32 on the CPU.
// The op's schema is declared here too.
//
// out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h / G]) v[b, j, h / G] over the
// keys j visible to query i: j <= Lk - Lq + i when causal (bottom-right alignment) and not
// key_padding_mask[b, j]. A row with no visible key is zeros.
//
// Tasks (at::parallel_for): (batch, kv head, tile of query rows); one task takes every query
// head of its GQA group, so each K/V tile is converted to fp32 once for G heads. Keys stream
// in tiles of kTileN = 64 with the online softmax; scores and P V are loops over 64 keys and
// over d that the compiler vectorises: the tile body (cpu_tile_body.h) is compiled for
// baseline x86-64, AVX2 and AVX-512, one copy picked per call by lmini/cpu/isa.h.
// With bf16 inputs on the AVX-512 copy, an even d and AMX (torch's cpublas can pack bf16: oneDNN
// brgemm runs on AMX tiles), both products run as brgemm micro-kernels instead (cpu_amx.h):
// tasks are then (batch, kv head, range of query tiles) and K, V are packed once per task.
// LMINI_PREFUSION_CPU_PATH=amx|vector forces a path (tests, measurements), read every call: amx
// fails on a CPU without AMX; vector is the tile body's path (vdpbf16ps for bf16 where it can).
// FLOPs: 4 * B * Hq * d * (visible pairs); bytes: q, k, v read once per query tile, out written.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "lmini/cpu/isa.h"
#include "lmini/cpu/row_convert.h"
#include "cpu_bf16.h"
#include "lmini/math.h"
#include "lmini/torch_utils.h"
#include "schema.h"

namespace lmini::cpu {
namespace {

constexpr int64_t kTileN = 64;

// C (m x n fp32, ldc) = or += A (m x k bf16, lda) B (k x n bf16 in VNNI pairs: B[k / 2][ldb][2]),
// one oneDNN brgemm micro-kernel through torch's cpublas (AMX tiles; kernels cached per thread).
inline void amx_gemm(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, bool add,
                     const uint32_t* a, const uint32_t* b, float* c) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, add, reinterpret_cast<const at::BFloat16*>(a),
                              reinterpret_cast<const at::BFloat16*>(b), c, true);
}

template <typename T>
struct Problem {
  const T *q, *k, *v;
  T* out;
  const bool* pad;  // (B, Lk) contiguous or nullptr
  int64_t lq, lk, hq, hkv, d, group;
  int64_t sqb, sql, sqh, skb, skl, skh, svb, svl, svh;
  bool causal;
  float scale;
};

// kW: floats per vector register of the copy; kRowBlock: query rows scored (and multiplied by
// V) together, each K or V vector load feeding kRowBlock FMAs; kScoreAcc: score accumulators
// held in registers (6 x 4 of 32 zmm with AVX-512; 3 x 4 of 16 ymm with AVX2, the 64-key tile
// in two halves; 2 x 4 of 16 xmm with SSE, in four quarters); kPvVecs: output vectors per row
// of a P V pass (kRowBlock x kPvVecs accumulators). transpose_block: dst[c * ldd + i] =
// rows[i][c0 + c] for a kW x kW block of 32-bit words, in registers.
namespace isa_default {
constexpr int kW = 4;
constexpr int kRowBlock = 2;
constexpr int kScoreAcc = 8;
constexpr int kPvVecs = 2;
static inline void transpose_block(const float* const* rows, int64_t c0, float* dst, int64_t ldd) {
  for (int i = 0; i < kW; ++i)
    for (int c = 0; c < kW; ++c) dst[c * ldd + i] = rows[i][c0 + c];
}
#include "cpu_tile_body.h"
}  // namespace isa_default

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
constexpr int kW = 8;
constexpr int kRowBlock = 3;
constexpr int kScoreAcc = 12;
constexpr int kPvVecs = 4;
static inline void transpose_block(const float* const* rows, int64_t c0, float* dst, int64_t ldd) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    const __m256 a = _mm256_loadu_ps(rows[i] + c0), b = _mm256_loadu_ps(rows[i + 1] + c0);
    t[i] = _mm256_unpacklo_ps(a, b);
    t[i + 1] = _mm256_unpackhi_ps(a, b);
  }
  for (int g = 0; g < 2; ++g) {  // rows 4g .. 4g + 3: u[4g + m] holds columns m and m + 4
    u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    _mm256_storeu_ps(dst + m * ldd, _mm256_permute2f128_ps(u[m], u[4 + m], 0x20));
    _mm256_storeu_ps(dst + (m + 4) * ldd, _mm256_permute2f128_ps(u[m], u[4 + m], 0x31));
  }
}
#include "cpu_tile_body.h"
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512")
namespace isa_avx512 {
constexpr int kW = 16;
constexpr int kRowBlock = 6;
constexpr int kScoreAcc = 24;
constexpr int kPvVecs = 4;
static inline void transpose_block(const float* const* rows, int64_t c0, float* dst, int64_t ldd) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    const __m512 a = _mm512_loadu_ps(rows[i] + c0), b = _mm512_loadu_ps(rows[i + 1] + c0);
    t[i] = _mm512_unpacklo_ps(a, b);
    t[i + 1] = _mm512_unpackhi_ps(a, b);
  }
  // rows 4g .. 4g + 3: u[4g + m], 128-bit lane l, holds column 4l + m
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 x = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88);  // columns m, m + 8 of rows 0-7
    const __m512 y = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);  // columns m + 4, m + 12
    const __m512 x2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);  // the same of rows 8-15
    const __m512 y2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
    _mm512_storeu_ps(dst + m * ldd, _mm512_shuffle_f32x4(x, x2, 0x88));
    _mm512_storeu_ps(dst + (m + 8) * ldd, _mm512_shuffle_f32x4(x, x2, 0xDD));
    _mm512_storeu_ps(dst + (m + 4) * ldd, _mm512_shuffle_f32x4(y, y2, 0x88));
    _mm512_storeu_ps(dst + (m + 12) * ldd, _mm512_shuffle_f32x4(y, y2, 0xDD));
  }
}
#define LMINI_LANES_AVX512 1
#include "cpu_tile_body.h"
#undef LMINI_LANES_AVX512
#if LMINI_HAVE_BF16_KERNELS
#include "cpu_amx.h"
#endif
}  // namespace isa_avx512
#pragma GCC pop_options

// Whether the AMX path (cpu_amx.h) runs: bf16 on the AVX-512 copy, d even, AMX present (torch can
// pack bf16 for oneDNN's brgemm), unless LMINI_PREFUSION_CPU_PATH=vector; =amx requires AMX
// (of bf16 inputs).
template <typename T>
bool use_amx(const Problem<T>& pr, Isa isa) {
  const char* force = std::getenv("LMINI_PREFUSION_CPU_PATH");
  const std::string path = force == nullptr ? "" : force;
  TORCH_CHECK(path.empty() || path == "amx" || path == "vector",
              "lmini::prefusion_attention (CPU): LMINI_PREFUSION_CPU_PATH must be amx or vector, not '", path, "'");
  if (path == "vector" || !std::is_same_v<T, c10::BFloat16>) return false;
#if LMINI_HAVE_BF16_KERNELS
  const bool amx = at::native::cpublas::could_pack(at::kBFloat16) && bf16dp::cpu_has_avx512bf16();
#else
  const bool amx = false;
#endif
  TORCH_CHECK(path != "amx" || amx,
              "lmini::prefusion_attention (CPU): LMINI_PREFUSION_CPU_PATH=amx, but this CPU (or torch's oneDNN) "
              "has no AMX bf16");
  return amx && isa == Isa::avx512 && pr.d % 2 == 0;
}

#if LMINI_HAVE_BF16_KERNELS
void run_amx(const Problem<c10::BFloat16>& pr, int64_t batch, HalfRowFn half_fn) {
  const int64_t bm = std::max<int64_t>(1, 64 / pr.group);  // queries per block: rows = bm * group
  const int64_t qtiles = (pr.lq + bm - 1) / bm;
  // Whole heads per task where that gives every thread 4 tasks, else heads split by query tiles.
  const int64_t heads = batch * pr.hkv, threads = at::get_num_threads();
  const int64_t chunks = std::min(qtiles, std::max<int64_t>(1, (4 * threads + heads - 1) / heads));
  const int64_t tiles = (pr.lk + kTileN - 1) / kTileN;
  at::parallel_for(0, heads * chunks, 1, [&](int64_t begin, int64_t end) {
    isa_avx512::AmxScratch scratch(tiles, bm * pr.group, pr.d);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c = t % chunks, hk = (t / chunks) % pr.hkv, b = t / (chunks * pr.hkv);
      const int64_t qa = c * qtiles / chunks * bm, qz = std::min(pr.lq, (c + 1) * qtiles / chunks * bm);
      if (qa < qz) isa_avx512::attention_task_amx(pr, b, hk, qa, qz, bm, scratch, half_fn);
    }
    at::native::cpublas::brgemm_release(true);
  });
}
#endif

template <typename T>
void run(const Problem<T>& pr, int64_t batch) {
  // About 16 rows per task: enough to reuse each converted K/V tile, few enough to keep
  // scores and accumulators in L1/L2.
  const int64_t bm = std::max<int64_t>(1, 64 / pr.group);
  const int64_t qtiles = (pr.lq + bm - 1) / bm;
  const int64_t tasks = batch * pr.hkv * qtiles;
  const int64_t rows = bm * pr.group;
  // + 2 * rows: the per-row key limits (int64) of a diagonal tile, after the converted K row
  const int64_t work_floats =
      2 * rows * pr.d + 3 * kTileN * pr.d + rows * kTileN * 3 / 2 + 2 * rows + pr.d + 2 + 2 * rows;
  const Isa isa = cpu_isa();
  const HalfRowFn half_fn = pick_half_row_fn(isa != Isa::base);
#if LMINI_HAVE_BF16_KERNELS
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (use_amx(pr, isa)) return run_amx(pr, batch, half_fn);
  } else {
    use_amx(pr, isa);  // checks the switch's value
  }
#else
  use_amx(pr, isa);
#endif
  // bf16 dot products (cpu_bf16.h) for bf16 inputs on the AVX-512 copy of a CPU with avx512_bf16
  bool dp = false;
#if LMINI_HAVE_BF16_KERNELS
  dp = std::is_same_v<T, c10::BFloat16> && isa == Isa::avx512 && pr.d % 32 == 0 && bf16dp::cpu_has_avx512bf16();
#endif
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(work_floats);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t qt = t % qtiles, hk = (t / qtiles) % pr.hkv, b = t / (qtiles * pr.hkv);
      const int64_t q0 = qt * bm, n = std::min(bm, pr.lq - q0);
      switch (isa) {
        case Isa::avx512: isa_avx512::attention_task(pr, b, hk, q0, n, work.data(), half_fn, dp); break;
        case Isa::avx2: isa_avx2::attention_task(pr, b, hk, q0, n, work.data(), half_fn, dp); break;
        case Isa::base: isa_default::attention_task(pr, b, hk, q0, n, work.data(), half_fn, dp); break;
      }
    }
  });
}

// Strided views are read in place when the head dimension is contiguous.
at::Tensor inner_contiguous(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

template <typename T>
void launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, const bool* pad,
            bool causal, float scale) {
  Problem<T> pr{q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(), pad,
                q.size(1),       k.size(1),       q.size(2),       k.size(2),         q.size(3),
                q.size(2) / k.size(2),
                q.stride(0),     q.stride(1),     q.stride(2),     k.stride(0),       k.stride(1),
                k.stride(2),     v.stride(0),     v.stride(1),     v.stride(2),       causal,
                scale};
  run(pr, q.size(0));
}

at::Tensor prefusion_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, bool causal,
                               const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const char* op = "lmini::prefusion_attention (CPU)";
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(), op,
              ": q, k, v must be CPU tensors");
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, op, ": q, k, v must be 4-D (B, L, H, d)");
  TORCH_CHECK(k_in.sizes() == v_in.sizes(), op, ": k and v must have the same shape");
  TORCH_CHECK(q_in.size(0) == k_in.size(0) && q_in.size(3) == k_in.size(3), op, ": q and k disagree on B or d");
  TORCH_CHECK(q_in.size(1) <= k_in.size(1), op, ": q: Lq must be <= Lk");
  TORCH_CHECK(k_in.size(2) > 0 && q_in.size(2) % k_in.size(2) == 0, op, ": q heads must be a multiple of k heads");
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(), op,
              ": q, k, v must share one dtype");
  const at::Tensor q = inner_contiguous(q_in), k = inner_contiguous(k_in), v = inner_contiguous(v_in);
  at::Tensor pad;
  if (key_padding_mask.has_value()) {
    pad = key_padding_mask->contiguous();
    TORCH_CHECK(pad.scalar_type() == at::kBool, op, ": key_padding_mask must be bool");
    TORCH_CHECK(pad.dim() == 2 && pad.size(0) == q.size(0) && pad.size(1) == k.size(1), op,
                ": key_padding_mask must be (B, Lk)");
    TORCH_CHECK(pad.device().is_cpu(), op, ": key_padding_mask must be a CPU tensor");
  }
  at::Tensor out = new_output(at::empty(q.sizes(), q.options()));
  if (out.numel() == 0) return out;
  const bool* padp = pad.defined() ? pad.data_ptr<bool>() : nullptr;
  const float s = float(scale);
  switch (dtype_of(q, "q")) {
    case DType::f32: launch<float>(q, k, v, out, padp, causal, s); break;
    case DType::f16: launch<c10::Half>(q, k, v, out, padp, causal, s); break;
    case DType::bf16: launch<c10::BFloat16>(q, k, v, out, padp, causal, s); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmini, m) { m.def(kPrefusionAttentionSchema); }

TORCH_LIBRARY_IMPL(lmini, CPU, m) { m.impl("prefusion_attention", &prefusion_attention); }

}  // namespace lmini::cpu
