// Host SIMT layer: runs CUDA kernel bodies on the CPU, for tests.
//
// A kernel written against csrc/include/lmini/common.cuh compiles with nvcc for the GPU and,
// with -DLMINI_EMU, with g++ (-std=c++20 -pthread) for the host against this header. Each
// launch starts one std::thread per CUDA thread of a block; the threads walk the grid's
// blocks together, one block at a time, so `__shared__` (made `static` here) is one array
// per kernel that every block reuses, exactly as a block sees its own shared memory.
//
// What it provides (and so what kernel code may use):
//   threadIdx, blockIdx, blockDim, gridDim; __syncthreads() (a real std::barrier over the
//   block); __shfl_xor_sync / __shfl_down_sync / __shfl_up_sync / __shfl_sync for 4- and
//   8-byte types (through a per-warp buffer and a barrier over the warp's threads: every
//   lane of a warp must take part, as with a full mask on a GPU); atomicAdd / atomicMax /
//   atomicMin / atomicCAS on int, unsigned, float, double (std::atomic_ref); __shared__
//   arrays and LMINI_DYNAMIC_SHARED for dynamic shared memory.
// What it does not: warp-synchronous code without shuffles, cooperative groups, async
// copies, tensor-core instructions. Launches are serialised by a mutex.
//
// Races are made likely rather than left to luck: each thread yields at random before
// every barrier, so a kernel that forgets a barrier fails its test. Building with
// -DLMINI_EMU_BROKEN_SYNCTHREADS turns __syncthreads into a no-op (plus the yield): the
// layer's self-tests must then fail, which tests/test_simt_layer.py checks.
#pragma once

#include <cuda_fp16.h>   // before anything else: under g++ these give dim3, uint3 and the
#include <cuda_bf16.h>   // host-side half/bfloat16 conversions that kernel code uses.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace lmini::emu {

constexpr unsigned kWarpSize = 32;

struct Warp {
  explicit Warp(unsigned lanes) : lanes(lanes), bar(static_cast<std::ptrdiff_t>(lanes)) {}
  unsigned lanes;
  std::barrier<> bar;
  alignas(8) unsigned char slots[kWarpSize][8];
};

struct LaunchState {
  dim3 grid, block;
  std::unique_ptr<std::barrier<>> block_bar;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> dynamic_smem;
};

inline LaunchState*& current_launch() {
  static LaunchState* state = nullptr;
  return state;
}

struct ThreadState {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  unsigned linear = 0;
  std::minstd_rand rng{1u};
};

inline ThreadState& self() {
  thread_local ThreadState state;
  return state;
}

inline void jitter() {
  // Yield at random so that the order threads reach a barrier changes from run to run.
  if ((self().rng() & 3u) == 0) std::this_thread::yield();
}

inline Warp& my_warp() { return *current_launch()->warps[self().linear / kWarpSize]; }
inline unsigned lane_id() { return self().linear % kWarpSize; }

template <typename T>
T shuffle_from(T value, int src_lane_of_warp, bool valid) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                "lmini::emu shuffles support trivially copyable types of at most 8 bytes");
  Warp& w = my_warp();
  const unsigned lane = lane_id();
  std::memcpy(w.slots[lane], &value, sizeof(T));
  jitter();
  w.bar.arrive_and_wait();  // every lane has written its value
  T out = value;
  if (valid && static_cast<unsigned>(src_lane_of_warp) < w.lanes) {
    std::memcpy(&out, w.slots[src_lane_of_warp], sizeof(T));
  }
  w.bar.arrive_and_wait();  // every lane has read before anyone writes again
  return out;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline unsigned char* dynamic_shared_memory() { return current_launch()->dynamic_smem.data(); }

// Runs `kernel(args...)` over the grid. Blocks run one after another; the threads of a
// block run concurrently.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Kernel kernel, Args... args) {
  const unsigned nthreads = block.x * block.y * block.z;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (nthreads == 0 || nthreads > 1024) {
    throw std::invalid_argument("lmini::emu::launch: block must have 1..1024 threads, got " +
                                std::to_string(nthreads));
  }
  if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {  // what a GPU refuses, refused here too
    throw std::invalid_argument("lmini::emu::launch: grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                                ", " + std::to_string(grid.z) + ") exceeds the GPU's (2^31 - 1, 65535, 65535)");
  }
  if (nblocks == 0) return;
  std::lock_guard<std::mutex> guard(launch_mutex());
  LaunchState state;
  state.grid = grid;
  state.block = block;
  state.block_bar = std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(nthreads));
  for (unsigned w = 0; w * kWarpSize < nthreads; ++w) {
    state.warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, nthreads - w * kWarpSize)));
  }
  state.dynamic_smem.assign(dynamic_smem_bytes + 16, 0);
  current_launch() = &state;

  std::vector<std::thread> threads;
  std::exception_ptr error;
  std::mutex error_mutex;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      ThreadState& me = self();
      me.linear = t;
      me.thread_idx = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      me.rng.seed(0x9E3779B9u ^ (t * 2654435761u));
      for (uint64_t b = 0; b < nblocks; ++b) {
        me.block_idx = make_uint3(unsigned(b % grid.x), unsigned((b / grid.x) % grid.y),
                                  unsigned(b / (uint64_t(grid.x) * grid.y)));
        try {
          kernel(args...);
        } catch (...) {
          std::lock_guard<std::mutex> g(error_mutex);
          if (!error) error = std::current_exception();
        }
        // End of block: nobody starts the next block (and reuses shared memory) early.
        state.block_bar->arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  current_launch() = nullptr;
  if (error) std::rethrow_exception(error);
}

}  // namespace lmini::emu

// ---- the CUDA built-ins kernel code sees -------------------------------------------------
#define threadIdx (::lmini::emu::self().thread_idx)
#define blockIdx (::lmini::emu::self().block_idx)
#define blockDim (::lmini::emu::current_launch()->block)
#define gridDim (::lmini::emu::current_launch()->grid)
#define warpSize (int(::lmini::emu::kWarpSize))

inline void __syncthreads() {
  ::lmini::emu::jitter();
#ifndef LMINI_EMU_BROKEN_SYNCTHREADS
  ::lmini::emu::current_launch()->block_bar->arrive_and_wait();
#endif
}

inline void __syncwarp(unsigned = 0xffffffffu) {
  ::lmini::emu::jitter();
  ::lmini::emu::my_warp().bar.arrive_and_wait();
}

template <typename T>
T __shfl_sync(unsigned, T value, int src_lane, int width = 32) {
  const int lane = int(::lmini::emu::lane_id());
  const int base = lane - lane % width;
  return ::lmini::emu::shuffle_from(value, base + (src_lane % width), true);
}
template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = 32) {
  const int lane = int(::lmini::emu::lane_id());
  const int src = lane ^ lane_mask;
  return ::lmini::emu::shuffle_from(value, src, src / width == lane / width);
}
template <typename T>
T __shfl_down_sync(unsigned, T value, unsigned delta, int width = 32) {
  const int lane = int(::lmini::emu::lane_id());
  const int src = lane + int(delta);
  return ::lmini::emu::shuffle_from(value, src, src / width == lane / width);
}
template <typename T>
T __shfl_up_sync(unsigned, T value, unsigned delta, int width = 32) {
  const int lane = int(::lmini::emu::lane_id());
  const int src = lane - int(delta);
  return ::lmini::emu::shuffle_from(value, src, src >= 0 && src / width == lane / width);
}

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;
}
// Replaces *address by value while replaces(old, value) holds; returns the old value.
template <typename T, typename Replaces>
T atomic_replace_if(T* address, T value, Replaces replaces) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (replaces(old, value) && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  return atomic_replace_if(address, value, [](T old, T v) { return old < v; });
}
template <typename T>
T atomicMin(T* address, T value) {
  return atomic_replace_if(address, value, [](T old, T v) { return v < old; });
}

inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
