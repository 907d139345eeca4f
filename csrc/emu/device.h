// The device policy (see lmini/cuda_device.h) of the emulated CUDA ops lmini_emu::<op>: CPU
// tensors, no stream; the host SIMT layer (emu/simt.h) runs the blocks one at a time.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

namespace lmini {

struct EmulatedDevice {
  static constexpr const char* kNamespace = "lmini_emu";
  static constexpr const char* kName = "CUDA kernel emulated on the CPU";
  static constexpr const char* kTensors = "CPU";
  static bool holds(const at::Tensor& t) { return t.is_cpu(); }
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static void* stream() { return nullptr; }
  // An H200's 132 SMs, the GPU the kernels are tuned for: automatic split choices are the ones
  // it would make, so the tests take the same split-and-merge paths.
  static int64_t sm_count() { return 132; }
};

}  // namespace lmini
