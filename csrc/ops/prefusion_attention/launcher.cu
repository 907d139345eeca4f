// Launcher of lmini::prefusion_attention_kernel (kernel.cuh); see launcher.h.
#include "kernel.cuh"
#include "launcher.h"

namespace lmini::cuda {
namespace {

template <typename T>
const char* dispatch_head_dim(const void* q, const void* k, const void* v, const void* pad, void* out,
                              int64_t batch, int64_t lq, int64_t lk, int64_t hq, int64_t hkv, int64_t d,
                              bool causal, float scale_log2, cudaStream_t s) {
  auto qp = static_cast<const T*>(q), kp = static_cast<const T*>(k), vp = static_cast<const T*>(v);
  auto pp = static_cast<const bool*>(pad);
  auto op = static_cast<T*>(out);
  switch (d) {
    case 64: launch_prefusion_attention_d<T, 64>(qp, kp, vp, pp, op, batch, lq, lk, hq, hkv, causal, scale_log2, s); break;
    case 80: launch_prefusion_attention_d<T, 80>(qp, kp, vp, pp, op, batch, lq, lk, hq, hkv, causal, scale_log2, s); break;
    case 96: launch_prefusion_attention_d<T, 96>(qp, kp, vp, pp, op, batch, lq, lk, hq, hkv, causal, scale_log2, s); break;
    case 128: launch_prefusion_attention_d<T, 128>(qp, kp, vp, pp, op, batch, lq, lk, hq, hkv, causal, scale_log2, s); break;
    default: return "lmini::prefusion_attention (CUDA): head dim must be 64, 80, 96 or 128";
  }
  return last_launch_error();
}

}  // namespace

const char* prefusion_attention(const void* q, const void* k, const void* v, const void* key_padding_mask, void* out,
                                DType dtype, int64_t batch, int64_t lq, int64_t lk, int64_t hq, int64_t hkv,
                                int64_t d, bool causal, float scale, void* stream) {
  if (batch * lq == 0) return nullptr;
  if (lq > lk || hkv <= 0 || hq % hkv != 0) return "lmini::prefusion_attention (CUDA): bad shapes";
  if (const char* e = grid_error(prefusion_grid(batch, lq, hq))) return e;
  const float scale_log2 = scale * 1.4426950408889634f;  // exp2 in the kernel
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32:
      return dispatch_head_dim<float>(q, k, v, key_padding_mask, out, batch, lq, lk, hq, hkv, d, causal, scale_log2, s);
    case DType::f16:
      return dispatch_head_dim<__half>(q, k, v, key_padding_mask, out, batch, lq, lk, hq, hkv, d, causal, scale_log2, s);
    case DType::bf16:
      return dispatch_head_dim<__nv_bfloat16>(q, k, v, key_padding_mask, out, batch, lq, lk, hq, hkv, d, causal,
                                              scale_log2, s);
  }
  return "lmini::prefusion_attention (CUDA): unknown dtype";
}

}  // namespace lmini::cuda
