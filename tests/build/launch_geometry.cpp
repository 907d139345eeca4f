// Prints the CUDA launch grids that the kernels' own geometry functions (csrc/ops/*/kernel.cuh)
// give for shapes named on the command line, one "x y z" line per shape, so that
// tests/build/test_launch_geometry.py checks them against the GPU's limits on the CPU:
//
//   launch_geometry prefusion B Lq Hq | compress B splits K | compress_merge B K | row_softmax rows
#include <cstdio>
#include <cstdlib>
#include <string>

#include "ops/compress/kernel.cuh"
#include "ops/prefusion_attention/kernel.cuh"
#include "ops/row_softmax/kernel.cuh"

int main(int argc, char** argv) {
  for (int i = 1; i < argc;) {
    const std::string op = argv[i++];
    auto next = [&] { return std::strtoll(argv[i++], nullptr, 10); };
    lmini::Grid g{0};
    if (op == "prefusion") {
      const long long b = next(), lq = next(), hq = next();
      g = lmini::prefusion_grid(b, lq, hq);
    } else if (op == "compress") {
      const long long b = next(), splits = next(), k = next();
      g = lmini::compress_grid(b, splits, k);
    } else if (op == "compress_merge") {
      const long long b = next(), k = next();
      g = lmini::compress_merge_grid(b, k);
    } else if (op == "row_softmax") {
      g = lmini::row_softmax_grid(next());
    } else {
      std::fprintf(stderr, "unknown op %s\n", op.c_str());
      return 2;
    }
    std::printf("%lld %lld %lld %d\n", (long long)g.x, (long long)g.y, (long long)g.z, lmini::grid_error(g) == nullptr);
  }
  return 0;
}
