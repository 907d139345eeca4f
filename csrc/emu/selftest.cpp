// Self-tests of the host SIMT layer (csrc/emu/simt.h), built by tests/build/test_simt_layer.py:
//
//   g++ -std=c++20 -pthread -DLMINI_EMU -I csrc/include -I csrc -I $CUDA/include selftest.cpp
//
// Each test launches a small CUDA kernel through the layer and compares with a serial
// answer, over several launches with fresh inputs. Prints "PASS name" or "FAIL name" per
// test and exits non-zero if any failed. Built with -DLMINI_EMU_BROKEN_SYNCTHREADS (every
// __syncthreads a no-op), the tests that depend on a barrier must FAIL: that is how the
// suite proves the layer's barrier is real and the tests can catch a missing one.
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "lmini/common.cuh"
#include "lmini/kernels/reduce.cuh"

namespace {

// --- 1. block reduction: warp shuffles + shared memory + barrier ---------------------------
__global__ void block_sum_kernel(const float* x, float* out, int n) {
  __shared__ float scratch[32];
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
  const float total = lmini::block_sum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

bool test_block_reduction(std::mt19937& rng) {
  const int n = 5000, blocks = 3, threads = 256;
  std::vector<float> x(n), out(blocks);
  std::uniform_int_distribution<int> d(-50, 50);
  for (int trial = 0; trial < 8; ++trial) {
    for (auto& v : x) v = float(d(rng));  // integers: the sum is exact in any order
    LMINI_LAUNCH(block_sum_kernel, dim3(blocks), dim3(threads), 0, nullptr, x.data(), out.data(), n);
    for (int b = 0; b < blocks; ++b) {
      float want = 0.0f;
      for (int i = b * threads; i < n; i += threads * blocks)
        for (int t = 0; t < threads && i + t < n; ++t) want += x[i + t];
      if (out[b] != want) return false;
    }
  }
  return true;
}

// --- 2. warp shuffles alone (no barrier involved): xor, down, up, broadcast ---------------
__global__ void shuffle_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  int v = lane;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int down = __shfl_down_sync(0xffffffffu, lane * 10, 1);
  const int up = __shfl_up_sync(0xffffffffu, lane * 10, 1);
  const int bcast = __shfl_sync(0xffffffffu, lane + 100, 7);
  out[threadIdx.x * 4 + 0] = v;
  out[threadIdx.x * 4 + 1] = down;
  out[threadIdx.x * 4 + 2] = up;
  out[threadIdx.x * 4 + 3] = bcast;
}

bool test_shuffles(std::mt19937&) {
  const int threads = 64;
  std::vector<int> out(threads * 4, -1);
  LMINI_LAUNCH(shuffle_kernel, dim3(1), dim3(threads), 0, nullptr, out.data());
  for (int t = 0; t < threads; ++t) {
    const int lane = t % 32;
    if (out[t * 4 + 0] != 496) return false;                              // sum of 0..31
    if (out[t * 4 + 1] != (lane < 31 ? (lane + 1) * 10 : lane * 10)) return false;  // own value past the edge
    if (out[t * 4 + 2] != (lane > 0 ? (lane - 1) * 10 : 0)) return false;
    if (out[t * 4 + 3] != 107) return false;
  }
  return true;
}

// --- 3. shared-memory transpose: a 32x32 tile, 32x8 threads, 4 rows each ------------------
constexpr int kTile = 32, kRows = 8;

__global__ void transpose_kernel(const float* in, float* out, int rows, int cols) {
  __shared__ float tile[kTile][kTile + 1];  // +1: no bank conflicts on the column read
  const int bx = blockIdx.x * kTile, by = blockIdx.y * kTile;
  for (int k = 0; k < kTile; k += kRows) {
    const int r = by + threadIdx.y + k, c = bx + threadIdx.x;
    if (r < rows && c < cols) tile[threadIdx.y + k][threadIdx.x] = in[r * cols + c];
  }
  __syncthreads();
  for (int k = 0; k < kTile; k += kRows) {
    const int r = bx + threadIdx.y + k, c = by + threadIdx.x;  // out is cols x rows
    if (r < cols && c < rows) out[r * rows + c] = tile[threadIdx.x][threadIdx.y + k];
  }
}

bool test_transpose(std::mt19937& rng) {
  const int rows = 45, cols = 70;
  std::vector<float> in(rows * cols), out(rows * cols);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (int trial = 0; trial < 4; ++trial) {
    for (auto& v : in) v = d(rng);
    const dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
    LMINI_LAUNCH(transpose_kernel, grid, dim3(kTile, kRows), 0, nullptr, in.data(), out.data(), rows, cols);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c)
        if (out[c * rows + r] != in[r * cols + c]) return false;
  }
  return true;
}

// --- 4. histogram: shared-memory atomics, a barrier, then global atomics ------------------
constexpr int kBins = 16;

__global__ void histogram_kernel(const int* x, int n, unsigned* bins, int* lo_hi) {
  __shared__ unsigned local[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    atomicAdd(&local[x[i]], 1u);
    atomicMin(&lo_hi[0], x[i]);
    atomicMax(&lo_hi[1], x[i]);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) atomicAdd(&bins[b], local[b]);
}

bool test_histogram(std::mt19937& rng) {
  const int n = 20000;
  std::vector<int> x(n);
  for (int trial = 0; trial < 4; ++trial) {
    // values in [lo, hi] of a random sub-range, so the min and max differ per trial
    const int lo = trial, hi = kBins - 1 - trial;
    std::uniform_int_distribution<int> d(lo, hi);
    for (auto& v : x) v = d(rng);
    std::vector<unsigned> bins(kBins, 0), want(kBins, 0);
    for (int v : x) ++want[v];
    int lo_hi[2] = {kBins, -1};
    LMINI_LAUNCH(histogram_kernel, dim3(4), dim3(128), 0, nullptr, x.data(), n, bins.data(), lo_hi);
    if (bins != want || lo_hi[0] != *std::min_element(x.begin(), x.end()) ||
        lo_hi[1] != *std::max_element(x.begin(), x.end()))
      return false;
  }
  return true;
}

// --- 5. dynamic shared memory: reverse a block's slice through it -------------------------
__global__ void reverse_kernel(const float* in, float* out) {
  LMINI_DYNAMIC_SHARED(float, buf);
  const int base = blockIdx.x * blockDim.x;
  buf[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

bool test_dynamic_shared(std::mt19937& rng) {
  const int threads = 96, blocks = 5;
  std::vector<float> in(threads * blocks), out(threads * blocks);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (int trial = 0; trial < 4; ++trial) {
    for (auto& v : in) v = d(rng);
    LMINI_LAUNCH(reverse_kernel, dim3(blocks), dim3(threads), threads * sizeof(float), nullptr, in.data(), out.data());
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < threads; ++t)
        if (out[b * threads + t] != in[b * threads + threads - 1 - t]) return false;
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(std::random_device{}());
  struct Test {
    const char* name;
    bool (*fn)(std::mt19937&);
  } tests[] = {{"block_reduction", test_block_reduction},
               {"shuffles", test_shuffles},
               {"transpose", test_transpose},
               {"histogram", test_histogram},
               {"dynamic_shared", test_dynamic_shared}};
  int failed = 0;
  for (const auto& t : tests) {
    const bool ok = t.fn(rng);
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", t.name);
    failed += !ok;
  }
  return failed == 0 ? 0 : 1;
}
