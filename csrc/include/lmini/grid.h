// Launch geometry against the GPU's limits, in plain C++ (nvcc's host code, the emulator, g++).
// Every GPU since sm_30 takes up to 2^31 - 1 blocks on grid axis x and 65,535 on y and z; a
// launch past them fails on the device only, so each kernel states its grid as a pure function
// (tests/build/test_launch_geometry.py checks the largest shapes the API takes, on the CPU) and
// its launcher refuses an oversized grid in words before launching.
#pragma once

#include <cstdint>

namespace lmini {

struct Grid {
  int64_t x, y = 1, z = 1;
};

constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;

// nullptr when the grid fits, else the message.
inline const char* grid_error(Grid g) {
  if (g.x > kMaxGridX) return "grid axis x would exceed the GPU's 2^31 - 1 blocks; split the batch into smaller calls";
  if (g.y > kMaxGridYZ || g.z > kMaxGridYZ)
    return "grid axis y or z would exceed the GPU's 65,535 blocks; split the batch into smaller calls";
  return nullptr;
}

}  // namespace lmini
