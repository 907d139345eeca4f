// The schema of lmini::compress_folded (cpu.cpp) and of its emulated twin
// lmini_emu::compress_folded (emu.cpp): one string, so the two cannot drift apart.
#pragma once

namespace lmini {
inline constexpr const char* kCompressFoldedSchema =
    "compress_folded(Tensor x, Tensor a, Tensor p, float eps, int splits, Tensor? pidx=None, Tensor? lengths=None, "
    "bool normalize=True) -> (Tensor, Tensor)";
}
