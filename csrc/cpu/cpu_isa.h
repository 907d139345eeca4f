// The vector ISA the CPU kernels run, shared by every kernel that keeps per-ISA copies.
#pragma once

#include <cstdlib>
#include <string>

namespace lmini::cpu {

enum class Isa { base, avx2, avx512 };

// The widest ISA this CPU runs (AVX-512 F+VL, else AVX2+FMA, else the build's baseline), capped
// by LMINI_CPU_ISA=base|avx2. The cap is read on every call, so the tests can run every copy on
// one machine.
inline Isa cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
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

}  // namespace lmini::cpu
