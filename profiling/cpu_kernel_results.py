"""Time our ops at their LLaVA-Mini shapes on this machine and write roofline input (minimal schema).

    python profiling/cpu_kernel_results.py [--out profiling/results/cpu_kernels.json] [--backends cpu reference]
    lmini profile roofline profiling/results/cpu_kernels.json

Until ``lmini bench`` writes results with ``flops`` and ``bytes`` per row, this gives the roofline
suite real CPU numbers. Timing: the benchmark harness (``lmini_tools.bench.harness.time_stats``,
the median of blocked_autorange), the thread count stated in the device string. FLOPs and fewest bytes per call:

* compress (FusedResampler, 1 x 576 x 1024 fp16, 1 query, 8 heads; folding cached): folded
  work 4 N heads Q D + 4 Q D^2 FLOPs; bytes: the features once (N D x 2) plus the output.
* prefusion_attention (44 queries over 621 keys, 32 heads of 128, fp16): 4 B H Lq Lk d (as
  FlopCounterMode counts SDPA); bytes: q, k, v read once, o written once.
* row_softmax (32 x 621 rows of 621, fp16): 5 FLOPs per element (max, subtract, exp, sum,
  scale); bytes: read once, write once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch

import lmini_kernels
from lmini_kernels.modules import FusedResampler
from lmini_tools.bench.harness import time_stats


def cases(dtype: torch.dtype = torch.float16):
    """(op, label, make_call(backend), flops, bytes) for each op."""
    es = torch.tensor([], dtype=dtype).element_size()
    n, d, heads, q = 576, 1024, 8, 1
    res = FusedResampler(1, d, heads).to(dtype).eval().freeze()  # caches the parameter-only folding, as in use
    with torch.no_grad():
        for p in res.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    x = torch.randn(1, n, d, dtype=dtype)
    yield ("compress", f"1x{n}x{d} C=1 {heads}h", lambda b: (lambda: res(x, backend=b)),
           4 * n * heads * q * d + 4 * q * d * d, (n * d + q * d) * es)  # fmt: skip
    lq, lk, h, hd = 44, 621, 32, 128
    qq = torch.randn(1, lq, h, hd, dtype=dtype)
    kk, vv = torch.randn(1, lk, h, hd, dtype=dtype), torch.randn(1, lk, h, hd, dtype=dtype)
    yield ("prefusion_attention", f"{lq}q x {lk}k {h}x{hd}",
           lambda b: (lambda: lmini_kernels.prefusion_attention(qq, kk, vv, causal=True, backend=b)),
           4 * lq * lk * h * hd, (2 * lq + 2 * lk) * h * hd * es)  # fmt: skip
    rows, cols = 32 * 621, 621
    s = torch.randn(rows, cols, dtype=dtype)
    yield ("row_softmax", f"{rows}x{cols}", lambda b: (lambda: lmini_kernels.row_softmax(s, 0.088, backend=b)),
           5 * rows * cols, 2 * rows * cols * es)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="profiling/results/cpu_kernels.json")
    p.add_argument("--backends", nargs="+", default=["cpu", "reference"])
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    args = p.parse_args(argv)
    results = []
    with torch.no_grad():
        for op, label, make, flops, nbytes in cases():
            for b in args.backends:
                call = make(b)
                median_ms, _ = time_stats(call, "cpu", min_run_time=args.min_run_time)
                results.append({"op": op, "backend": b, "label": label, "dtype": "float16", "median_s": median_ms / 1e3,
                                "flops": flops, "bytes": nbytes})  # fmt: skip
                print(f"{op:20s} {b:10s} {median_ms * 1e3:10.1f} us")
    doc = {
        "device": f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
