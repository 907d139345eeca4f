// Row conversion of fp32 / fp16 / bf16 inputs to fp32 scratch, shared by the CPU kernels.
//
// c10::Half's scalar conversion is a software bit routine in a build without -mf16c: converting
// a 1 x 576 x 1024 fp16 input took about 3 ms of a 4.1 ms compression on an AVX2 EPYC. F16C
// converts 8 halves per instruction (chosen at run time); bf16 -> fp32 is a 16-bit shift, which
// the compiler vectorises.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define LMINI_ROW_CONVERT_F16C 1
#endif

namespace lmini::cpu {

using HalfRowFn = void (*)(const c10::Half*, float*, int64_t);

inline void half_row_scalar(const c10::Half* src, float* dst, int64_t n) {
  for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<float>(src[d]);
}

#if LMINI_ROW_CONVERT_F16C
__attribute__((target("avx2,f16c"))) inline void half_row_f16c(const c10::Half* src, float* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d));
    _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(h));
  }
  for (; d < n; ++d) dst[d] = static_cast<float>(src[d]);
}
#endif

// True when `simd` (the caller's ISA choice allows AVX2) and the CPU has F16C.
inline bool use_f16c(bool simd) {
#if LMINI_ROW_CONVERT_F16C
  return simd && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

inline HalfRowFn pick_half_row_fn(bool simd) {
#if LMINI_ROW_CONVERT_F16C
  if (use_f16c(simd)) return half_row_f16c;
#endif
  return half_row_scalar;
}

// fp32 -> fp16, round to nearest even (as c10::Half's constructor).
using HalfStoreFn = void (*)(const float*, c10::Half*, int64_t);

inline void half_store_scalar(const float* src, c10::Half* dst, int64_t n) {
  for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<c10::Half>(src[d]);
}

#if LMINI_ROW_CONVERT_F16C
__attribute__((target("avx2,f16c"))) inline void half_store_f16c(const float* src, c10::Half* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + d), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d), h);
  }
  for (; d < n; ++d) dst[d] = static_cast<c10::Half>(src[d]);
}
#endif

inline HalfStoreFn pick_half_store_fn(bool simd) {
#if LMINI_ROW_CONVERT_F16C
  if (use_f16c(simd)) return half_store_f16c;
#endif
  return half_store_scalar;
}

inline void convert_row(const float* src, float* dst, int64_t n, HalfRowFn) {
  std::memcpy(dst, src, n * sizeof(float));
}
inline void convert_row(const c10::Half* src, float* dst, int64_t n, HalfRowFn half_fn) { half_fn(src, dst, n); }
inline void convert_row(const c10::BFloat16* src, float* dst, int64_t n, HalfRowFn) {
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
  auto* out = reinterpret_cast<uint32_t*>(dst);
  for (int64_t d = 0; d < n; ++d) out[d] = uint32_t(bits[d]) << 16;
}

}  // namespace lmini::cpu
