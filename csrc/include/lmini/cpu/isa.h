// The vector ISA the CPU kernels run: the one mechanism by which every CPU kernel with
// per-ISA copies picks its copy.
//
// A kernel compiles its hot function once per ISA: the baseline (the build has no -march
// flags: SSE2 on x86-64), LMINI_TARGET_AVX2 and LMINI_TARGET_AVX512 (function attributes),
// or the same targets as `#pragma GCC target` regions; then it picks the copy for cpu_isa()
// once per call, with LMINI_ISA_PICK where the copies are functions named <name>_baseline,
// <name>_avx2 and <name>_avx512.
#pragma once

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LMINI_X86_DISPATCH 1
#define LMINI_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define LMINI_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define LMINI_ISA_PICK(isa, name) ::lmini::cpu::isa_pick((isa), name##_baseline, name##_avx2, name##_avx512)
#else
#define LMINI_ISA_PICK(isa, name) name##_baseline
#endif

namespace lmini::cpu {

enum class Isa { base, avx2, avx512 };

// The widest ISA this CPU runs (AVX-512 F+VL, else AVX2+FMA, else the build's baseline),
// chosen by CPU features, not CPU model (AMD Zen 4 gets AVX-512), and capped by
// LMINI_CPU_ISA=base|avx2. The cap is read on every call, so the tests can run every copy on
// one machine.
inline Isa cpu_isa() {
#if defined(LMINI_X86_DISPATCH)
  static const Isa best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? Isa::avx512
                          : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")      ? Isa::avx2
                                                                                                  : Isa::base;
#else
  const Isa best = Isa::base;
#endif
  const char* cap = std::getenv("LMINI_CPU_ISA");
  if (cap == nullptr) return best;
  const std::string c(cap);
  if (c == "base") return Isa::base;
  if (c == "avx2") return best == Isa::base ? Isa::base : Isa::avx2;
  return best;
}

template <typename Fn>
Fn isa_pick(Isa isa, Fn baseline, Fn avx2, Fn avx512) {
  switch (isa) {
    case Isa::avx512: return avx512;
    case Isa::avx2: return avx2;
    case Isa::base: break;
  }
  return baseline;
}

}  // namespace lmini::cpu
