// Launcher of lmini::compress_folded_kernel (kernel.cuh); see launcher.h.
#include "kernel.cuh"
#include "launcher.h"

namespace lmini::cuda {

const char* compress_folded(const void* x, const float* a, const float* p, const int32_t* pidx,
                            const int32_t* lengths, float* acc, float* lse, float* part, DType dtype, int64_t batch,
                            int64_t n, int64_t dim, int64_t nk, int64_t p_cols, int64_t x_batch_stride,
                            int64_t x_token_stride, float eps, bool normalize, int64_t splits, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int sp = int(splits < 1 ? 1 : splits);
  if (const char* e = grid_error(compress_grid(batch, sp, nk))) return e;
  if (const char* e = grid_error(compress_merge_grid(batch, nk))) return e;
  const CompressExtras ex{pidx, lengths, p_cols, normalize};
  switch (dtype) {
    case DType::f32:
      launch_compress_folded(static_cast<const float*>(x), a, p, acc, lse, part, batch, n, dim, nk, x_batch_stride,
                             x_token_stride, eps, sp, ex, s);
      break;
    case DType::f16:
      launch_compress_folded(static_cast<const __half*>(x), a, p, acc, lse, part, batch, n, dim, nk, x_batch_stride,
                             x_token_stride, eps, sp, ex, s);
      break;
    case DType::bf16:
      launch_compress_folded(static_cast<const __nv_bfloat16*>(x), a, p, acc, lse, part, batch, n, dim, nk,
                             x_batch_stride, x_token_stride, eps, sp, ex, s);
      break;
  }
  return last_launch_error();
}

}  // namespace lmini::cuda
