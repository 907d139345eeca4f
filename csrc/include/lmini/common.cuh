// One kernel source, three compilers.
//
//   nvcc (__CUDACC__)        the real GPU build: kernels launch with <<<...>>>.
//   g++ with -DLMINI_EMU     the host SIMT layer (csrc/emu/simt.h) runs the same kernel
//                            bodies on CPU threads, for the tests.
//   g++ (plain)              CPU kernels: only the LMINI_HD math helpers are used.
//
// Kernel code uses LMINI_LAUNCH and LMINI_DYNAMIC_SHARED instead of the raw CUDA syntax, and
// the conversion helpers below instead of type-specific intrinsics, so that one body serves
// the GPU build and the emulated one.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LMINI_HD __host__ __device__ __forceinline__
#define LMINI_DEVICE __device__ __forceinline__
#define LMINI_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define LMINI_DYNAMIC_SHARED(T, name)                              \
  extern __shared__ __align__(16) unsigned char name##_bytes_[]; \
  T* name = reinterpret_cast<T*>(name##_bytes_)
#elif defined(LMINI_EMU)
#include "emu/simt.h"
#define LMINI_HD inline
#define LMINI_DEVICE inline
#define LMINI_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::lmini::emu::launch((grid), (block), (smem), kernel, __VA_ARGS__)
#define LMINI_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::lmini::emu::dynamic_shared_memory())
#else
#define LMINI_HD inline
#endif

#if defined(__CUDACC__) || defined(LMINI_EMU)
namespace lmini {

LMINI_DEVICE float to_float(float x) { return x; }
LMINI_DEVICE float to_float(__half x) { return __half2float(x); }
LMINI_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
LMINI_DEVICE T from_float(float x);
template <>
LMINI_DEVICE float from_float<float>(float x) { return x; }
template <>
LMINI_DEVICE __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
LMINI_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Launch error check: a no-op on the host layer (its errors are C++ exceptions).
#if defined(__CUDACC__)
inline const char* last_launch_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
#else
inline const char* last_launch_error() { return nullptr; }
#endif

}  // namespace lmini
#endif
