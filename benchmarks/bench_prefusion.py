"""Benchmark of pre-fusion: ``python benchmarks/bench_prefusion.py [--device cpu|cuda] [--quick]``.

The same as ``lmini bench prefusion`` (suite in python/lmini_tools/bench/prefusion.py): the attention
op vs SDPA (eager and compiled), flash-attn when importable and our backends; the FusedPreFusion
module vs the official pre-fusion for 1 question, 5 questions on one image and a video. Results
go to benchmarks/results/prefusion-<device>-<date>.{json,csv,png}.
"""

from __future__ import annotations

import sys

from lmini_tools.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prefusion", *sys.argv[1:]]))
