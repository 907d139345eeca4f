"""Each member of the query-resampler family at its real sizes beside its own module:
``python benchmarks/bench_resampler_family.py [--quick] [--compile all|fp32|none] [--no-write]``.

Members (the issue's table): MiniCPM-V 2.6 (Q 64, D 3584, 28 heads, kv 1152, slices of 32x32
patches, 10 ragged slices), 2.5 (Q 96, D 4096, 32 heads), 2.0 (Q 64, D 2304, 18 heads, kv
1152, Resampler2 with post projection), Qwen-VL (Q 256, D 4096, 32 heads, kv 1664, N 1024) and
LLaVA-Mini (Q 1, D 4096, 32 heads, N 576). Each runs beside its stand-in module
(tests/integrations/resampler_standins.py; LLaVA-Mini: lmini_tools.baselines.OfficialResampler)
eager and torch.compile'd, in float32 and bfloat16, on CPU. Per row: ms of the source (eager,
compiled), of the fused module (frozen, as the integrations use it) with each algorithm, the
algorithm "auto" picks (by the cost model ``algorithm_costs``/``CORE_COST`` in
lmini_kernels/ops/compress/api.py) and whether it was the fastest, and the GFLOP/s each
achieves on the source's FLOP count (kv_proj, key/value projections, attention, output
projection and epilogue). ``--quick``: 2 images of at most 16x16 patches (the per-token costs
the cost model compares do not depend on N; the frozen fold is per call).

Timing: the median of a few runs after a warm-up (time.perf_counter; the machine's load at the
start is in the results). Results: benchmarks/results/resampler-family-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integrations"), str(ROOT / "python"), str(ROOT)]

from resampler_standins import HubMiniCPMVResampler, QwenVLResampler, VllmResampler2, perturb_  # noqa: E402

import lmini_kernels as lk  # noqa: E402
from lmini_kernels.ops.compress.api import CORE_COST, algorithm_costs, choose_algorithm  # noqa: E402
from lmini_tools.baselines import OfficialResampler  # noqa: E402
from lmini_tools.bench.harness import environment  # noqa: E402

#: name -> (make the source, Q, D, heads, kv_dim, (H, W) per image (full run), layout kind)
MEMBERS = {
    "MiniCPM-V 2.6": (lambda: HubMiniCPMVResampler(64, 3584, 28, kv_dim=1152), 64, 3584, 28, 1152, "ragged"),
    "MiniCPM-V 2.5": (lambda: HubMiniCPMVResampler(96, 4096, 32, kv_dim=1152), 96, 4096, 32, 1152, "ragged"),
    "MiniCPM-V 2.0": (lambda: VllmResampler2(8, 2304, 18, kv_dim=1152), 64, 2304, 18, 1152, "grid"),
    "Qwen-VL": (lambda: QwenVLResampler(16, 4096, 32, kv_dim=1664), 256, 4096, 32, 1664, "square"),
    "LLaVA-Mini": (lambda: OfficialResampler(1, 4096, 32), 1, 4096, 32, None, "llava"),
}


def sizes_for(kind: str, quick: bool) -> list[tuple[int, int]]:
    if kind == "ragged":  # slices of up to 32x32 patches, ragged
        return [(16, 16), (12, 14)] if quick else [(32, 32)] * 6 + [(28, 32), (32, 24), (20, 30), (16, 22)]
    if kind == "llava":
        return [(16, 16)] if quick else [(24, 24)]
    return [(16, 16)] * 2 if quick else [(32, 32)]


def call_args(kind, sizes, kv, dim, dtype):
    """(x, args) for the source's forward."""
    lens = [h * w for h, w in sizes]
    x = torch.randn(len(sizes), max(lens), kv or dim, dtype=dtype)
    if kind == "ragged":
        for b, n in enumerate(lens):
            x[b, n:] = 0
        return x, (torch.tensor(sizes),)
    if kind == "grid":
        return x, (sizes[0],)
    return x, ()


def flops(q, dim, kv, sizes, post: bool) -> float:
    """The source's multiply-add work x 2: kv_proj, key and value projections, scores and
    weighted sums, the query and output projections and the epilogue."""
    tokens = sum(h * w for h, w in sizes)
    b = len(sizes)
    per_token = (2 * kv * dim if kv else 0) + 4 * dim * dim + 4 * q * dim
    per_image = 4 * q * dim * dim + (2 * q * dim * dim if post else 0)
    return float(tokens * per_token + b * per_image)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def measure(src, fused, x, call, algos, compile_it: bool, repeats: int) -> dict[str, float]:
    """ms of the source (eager, and compiled when ``compile_it``) and of the fused module with
    each of ``algos``, on the same inputs."""
    ms = {}
    with torch.inference_mode():
        ms["source eager"] = median_ms(lambda: src(x, *call), repeats)
        if compile_it:
            compiled = torch.compile(src)
            ms["source compiled"] = median_ms(lambda: compiled(x, *call), repeats)
        for algo in algos:
            ms[algo] = median_ms(lambda a=algo: fused(x, *call, algorithm=a, backend="cpu"), repeats)
    return ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 images of at most 16x16 patches, 2 timed runs")
    p.add_argument("--compile", choices=("all", "fp32", "none"), default="all", help="which dtypes time torch.compile")
    p.add_argument("--members", default=",".join(MEMBERS), help="comma-separated members")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    repeats = 2 if args.quick else 5
    env = environment("cpu")
    env.update(core_cost=CORE_COST, quick=args.quick)
    print(f"# {env['device_name']}, {env['threads']} threads, {env['isa']}, load {env['load_avg_1m']:.1f}, "
          f"torch {env['torch']}, CORE_COST {CORE_COST}")  # fmt: skip
    rows = []
    start = time.perf_counter()
    torch.manual_seed(0)
    for name in args.members.split(","):
        make, q, dim, heads, kv, kind = MEMBERS[name]
        src32 = perturb_(make(), seed=0).eval()
        sizes = sizes_for(kind, args.quick)
        post = getattr(src32, "proj", None) is not None
        work = flops(q, dim, kv, sizes, post)
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            src = src32.to(dtype)
            fused = lk.FusedResampler.from_module(src, share=True).freeze()
            x, call = call_args(kind, sizes, kv, dim, dtype)
            algos = ["folded", "projected"] + (["folded_kv"] if kv else [])
            compile_it = args.compile == "all" or (args.compile == "fp32" and dtype == torch.float32)
            ms = measure(src, fused, x, call, algos, compile_it, repeats)
            choice = choose_algorithm("auto", q, heads, dim, "cpu", kv)
            ms["auto"] = ms[choice]  # auto runs exactly its chosen algorithm
            fastest = min(algos, key=ms.get)
            costs = algorithm_costs(q, heads, dim, kv)
            row = dict(member=name, dtype=dtype_name, images=len(sizes), tokens=sum(h * w for h, w in sizes),
                       queries=q, dim=dim, heads=heads, kv_dim=kv, ms=ms, auto=choice, fastest=fastest,
                       auto_is_fastest=choice == fastest, auto_vs_fastest=ms[choice] / ms[fastest],
                       gflops={k: work / v / 1e6 for k, v in ms.items()}, model_cost_per_token=costs,
                       source_flops=work)  # fmt: skip
            rows.append(row)
            cells = "  ".join(f"{k} {v:8.1f}" for k, v in ms.items())
            print(f"{name:14s} {dtype_name:8s} B={len(sizes):2d} | {cells} | auto={choice} "
                  f"{'fastest' if choice == fastest else f'NOT fastest ({fastest}, x{ms[choice] / ms[fastest]:.2f})'}"
                  f" | GFLOP/s source {row['gflops']['source eager']:.0f}, auto {row['gflops']['auto']:.0f}",
                  flush=True)  # fmt: skip
    env["wall_s"] = time.perf_counter() - start
    env["load_avg_1m_end"] = os.getloadavg()[0]
    print(f"# {env['wall_s']:.0f} s, load at the end {env['load_avg_1m_end']:.1f}")
    if not args.no_write:
        stamp = env["date"].replace("-", "").replace(":", "")
        out = ROOT / "benchmarks" / "results" / f"resampler-family-cpu-{stamp}.json"
        out.write_text(json.dumps({"suite": "resampler-family", "environment": env, "rows": rows}, indent=1))
        print(f"# wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
