// The schema of lmini::row_softmax (cpu.cpp) and of its emulated twin lmini_emu::row_softmax
// (emu.cpp): one string, so the two cannot drift apart.
#pragma once

namespace lmini {
inline constexpr const char* kRowSoftmaxSchema = "row_softmax(Tensor x, float scale) -> Tensor";
}
