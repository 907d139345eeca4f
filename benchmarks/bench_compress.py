"""Benchmark of the compressor: ``python benchmarks/bench_compress.py [--device cpu|cuda] [--quick]``.

The same as ``lmini bench compress`` (suite in python/lmini_tools/bench/compress.py); results go to
benchmarks/results/compress-<device>-<date>.{json,csv,png}.
"""

from __future__ import annotations

import sys

from lmini_tools.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["compress", *sys.argv[1:]]))
