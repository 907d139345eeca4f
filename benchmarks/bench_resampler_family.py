"""The resampler family at real sizes: each member's own module beside FusedResampler, one run.

    python benchmarks/bench_resampler_family.py [--batch B] [--repeats R] [--compile] [--dtype bfloat16]

Members (sizes from the issue's table; N = 32 x 32 slices, MiniCPM-V's ragged: every other
slice 24 x 40 = 960 tokens): MiniCPM-V 2.6 (Q 64, D 3584, 28 heads, kv 1152), MiniCPM-V 2.5
(Q 96, D 4096, 32 heads, kv 1152), MiniCPM-V 2.0 (Q 64, D 2304, 18 heads, kv 1152, vLLM
Resampler2 with the post projection), Qwen-VL (Q 256, D 4096, 32 heads, kv 1664) and LLaVA-Mini
(Q 1, D 4096, 32 heads, N 576). The sources are this project's stand-ins written from the
members' code (tests/integrations/resampler_standins.py; LLaVA-Mini's from lmini_tools.baselines).
Per row: ms (median of interleaved runs), GFLOP/s of the source's own FLOPs count, speedup
over the source; per member, every fused algorithm's time, auto's choice (the cost model of
``lmini_kernels.ops.compress.api.algorithm_costs``) and whether it was the fastest. A benchmark,
not a test: numbers depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integrations"))

from resampler_standins import HubMiniCPMVResampler, QwenVLResampler, VllmResampler2, perturb_  # noqa: E402

import lmini_kernels as lk  # noqa: E402
from lmini_kernels.ops.compress.api import choose_algorithm  # noqa: E402
from lmini_tools.baselines import OfficialResampler  # noqa: E402
from lmini_tools.bench.harness import cpu_name, interleaved_times  # noqa: E402

MEMBERS = {  # name: (factory, kv_dim, call kind)
    "MiniCPM-V 2.6": (lambda: HubMiniCPMVResampler(64, 3584, 28, kv_dim=1152), 1152, "tgt"),
    "MiniCPM-V 2.5": (lambda: HubMiniCPMVResampler(96, 4096, 32, kv_dim=1152), 1152, "tgt"),
    "MiniCPM-V 2.0": (lambda: VllmResampler2(8, 2304, 18, kv_dim=1152), 1152, "grid"),
    "Qwen-VL": (lambda: QwenVLResampler(16, 4096, 32, kv_dim=1664), 1664, "square"),
    "LLaVA-Mini": (lambda: OfficialResampler(1, 4096, 32), 4096, "square576"),
}


def source_flops(q: int, dim: int, kv: int, tokens: int) -> float:
    """The source's own work: kv_proj, K and V projections, attention, out (+ post) projection."""
    proj = 2 * kv * dim if kv != dim else 0
    return tokens * (proj + 4 * dim * dim + 4 * q * dim) + 4 * q * dim * dim


def inputs(kind: str, kv: int, batch: int, dtype):
    if kind == "tgt":
        sizes = torch.tensor([[32, 32] if i % 2 == 0 else [24, 40] for i in range(batch)])
        return torch.randn(batch, 1024, kv, dtype=dtype), (sizes,), int((sizes[:, 0] * sizes[:, 1]).sum())
    if kind == "grid":
        return torch.randn(batch, 1024, kv, dtype=dtype), ((32, 32),), batch * 1024
    n = 576 if kind == "square576" else 1024
    return torch.randn(batch, n, kv, dtype=dtype), (), batch * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--compile", action="store_true", help="also the source under torch.compile (slow to compile)")
    ap.add_argument("--members", default=",".join(MEMBERS))
    ap.add_argument("--out", default=None, help="a JSON file for the rows")
    args = ap.parse_args()
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")
    dtype = getattr(torch, args.dtype)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    print(f"resampler family: {cpu_name()}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"load {os.getloadavg()[0]:.1f}, torch {torch.__version__}")  # fmt: skip
    rows: list[dict] = []
    try:
        run(args, dtype, rows)
    except KeyboardInterrupt:  # a time budget's SIGINT (benchmarks/gpu_session.sh): keep the finished rows
        print(f"interrupted; keeping the {len(rows)} rows finished", file=sys.stderr)
    print(f"\nload after: {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"dtype": args.dtype, "cpu": cpu_name(), "rows": rows}, indent=1))


def run(args, dtype, rows: list[dict]) -> None:
    for name in args.members.split(","):
        make, kv, kind = MEMBERS[name]
        torch.manual_seed(0)
        src = perturb_(make()).to(args.device, dtype).eval()
        fused = lk.FusedResampler.from_module(src, share=True).freeze()
        x, call, tokens = inputs(kind, kv, args.batch, dtype)
        x = x.to(args.device)
        q, dim, heads = src.query.shape[0], src.query.shape[1], src.attn.num_heads
        providers = {"source eager": lambda s=src, x=x, c=call: s(x, *c)}
        if args.compile:
            compiled = torch.compile(src)
            providers["source compiled"] = lambda m=compiled, x=x, c=call: m(x, *c)
        kv_dim = kv if kv != dim else None
        algos = ["folded", "projected"] + (["folded_kv"] if kv_dim else [])
        for algo in algos:
            providers[f"fused {algo}"] = lambda a=algo, f=fused, x=x, c=call: f(x, *c, algorithm=a)
        with torch.no_grad():
            ref = src(x, *call)
            ref = ref[0] if isinstance(ref, tuple) else ref
            for algo in algos:
                out = fused(x, *call, algorithm=algo)
                out = out[0] if isinstance(out, tuple) else out
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                assert err < (1e-4 if dtype == torch.float32 else 2e-2), (name, algo, err)
            if args.device == "cuda":  # wall time of finished work: synchronise after each call
                providers = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in providers.items()}
            times = interleaved_times(providers, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        if args.device == "cuda":
            torch.cuda.synchronize()
        auto = choose_algorithm("auto", q, heads, dim, args.device, kv_dim)
        fastest = min((k for k in med if k.startswith("fused")), key=med.get).removeprefix("fused ")
        flops = source_flops(q, dim, kv, tokens)
        print(f"\n{name}: Q {q}, D {dim}, {heads} heads, kv {kv}, {tokens} tokens; auto -> {auto} "
              f"({'the fastest' if auto == fastest else 'fastest is ' + fastest})")  # fmt: skip
        for k, ms in med.items():
            sp = med["source eager"] / ms
            print(f"  {k:18s} {ms:10.1f} ms  {flops / ms / 1e6:8.1f} GFLOP/s (source's count)  {sp:6.2f}x")
            rows.append(dict(member=name, provider=k, ms=ms, speedup=sp, auto=auto, fastest=fastest))


if __name__ == "__main__":
    main()
