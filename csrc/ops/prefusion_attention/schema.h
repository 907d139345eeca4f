// The schema of lmini::prefusion_attention (cpu.cpp) and of its emulated twin
// lmini_emu::prefusion_attention (emu.cpp): one string, so the two cannot drift apart.
#pragma once

namespace lmini {
inline constexpr const char* kPrefusionAttentionSchema =
    "prefusion_attention(Tensor q, Tensor k, Tensor v, bool causal, Tensor? key_padding_mask, float scale) -> Tensor";
}
