// The device policy of the CUDA glue, and what a policy is.
//
// Each op's glue (ops/<op>/glue.h: argument checks, output allocation, split choice, launch)
// is written once, templated on a device policy, and registered twice:
//
//   CudaDevice (here)              lmini::<op>, CUDA key: the launchers built by nvcc.
//   EmulatedDevice (emu/device.h)  lmini_emu::<op>, CPU key: the same launchers built by g++
//                                  against the host SIMT layer (tests, no GPU needed).
//
// A policy provides:
//   kNamespace, kName     how messages name the op: "<kNamespace>::<op> (<kName>)" (op_label)
//   kTensors, holds(t)    the device the tensors must be on, in words, and the test of it
//   Guard(device)         makes the tensors' device current for the launch
//   stream()              the stream to launch on (a cudaStream_t, as void*)
//   sm_count()            multiprocessors of the current device (automatic split choices)
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace lmini {

struct CudaDevice {
  static constexpr const char* kNamespace = "lmini";
  static constexpr const char* kName = "CUDA";
  static constexpr const char* kTensors = "CUDA";
  static bool holds(const at::Tensor& t) { return t.is_cuda(); }
  using Guard = c10::cuda::CUDAGuard;
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  static int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
};

}  // namespace lmini
