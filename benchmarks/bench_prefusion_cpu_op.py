"""The CPU prefusion_attention op against torch SDPA, interleaved: ``python benchmarks/bench_prefusion_cpu_op.py``.

Issue 16's CPU goal: ``lmini cpu`` >= 1.0x SDPA (explicit bottom-right causal bool mask, same
threads, same run) at the suffix shape (Lq 44 over Lk 620) with 8 and 32 heads, at full causal
620 x 620 and for 64 frames (batch 64 at the suffix shape), in fp32 and bf16, on the AVX2 and
AVX-512 copies (LMINI_CPU_ISA caps the ISA per call, so both run in one process on an AVX-512
machine; ``--vector`` adds the AVX-512 copy forced off the AMX path). Head dim 128; ``--gqa G``
gives K/V Hq / G heads (SDPA gets them repeated, as the model would). The providers of a case
run in turn, ``--repeats`` times (a shared machine's load spreads over all of them); per row:
median and min ms, GFLOP/s (4 * B * Hq * d * visible pairs over the median) and the ratio of
SDPA's median to the row's median. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.nn.functional as F

from lmini_kernels.ops.prefusion_attention import prefusion_attention
from lmini_kernels.ops.prefusion_attention.reference import visible_mask
from lmini_tools.bench.harness import cpu_name, interleaved_times
from lmini_tools.bench.prefusion import visible_pairs


def _sdpa(q, k, v, mask):
    g = q.shape[2] // k.shape[2]
    if g > 1:
        k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2)


def _lmini(isa: str, path: str = ""):
    """The CPU op on the ``isa`` copy; ``path`` (amx|vector) sets LMINI_PREFUSION_CPU_PATH."""

    def fn(q, k, v, mask):
        os.environ["LMINI_CPU_ISA"] = isa
        if path:
            os.environ["LMINI_PREFUSION_CPU_PATH"] = path
        try:
            return prefusion_attention(q, k, v, backend="cpu")
        finally:
            del os.environ["LMINI_CPU_ISA"]
            os.environ.pop("LMINI_PREFUSION_CPU_PATH", None)

    return fn


def _cases(frames: int, heads: list[int]) -> list[tuple[str, int, int, int, int]]:
    out = [(f"suffix 44x620 H={h}", 1, 44, 620, h) for h in heads]
    out.append(("full 620x620 H=32", 1, 620, 620, 32))
    out.append((f"frames B={frames} 44x620 H=32", frames, 44, 620, 32))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--gqa", type=int, default=1, help="query heads per K/V head")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--isas", default="avx512,avx2")
    ap.add_argument("--heads", default="8,32")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    ap.add_argument("--vector", action="store_true", help="also the AVX-512 copy forced to the vector path (bf16)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'case':28s} {'dtype':9s} {'provider':14s} {'median ms':>10s} {'min ms':>9s} {'GFLOP/s':>8s} "
          f"{'vs sdpa':>8s}")  # fmt: skip
    providers = {"sdpa": _sdpa, **{f"lmini {isa}": _lmini(isa) for isa in args.isas.split(",")}}
    if args.vector:
        providers["lmini 512 vector"] = _lmini("avx512", "vector")
    with torch.no_grad():
        for case, b, lq, lk, h in _cases(args.frames, [int(x) for x in args.heads.split(",")]):
            if args.only and args.only not in case:
                continue
            for dname in args.dtypes.split(","):
                dtype = getattr(torch, dname)
                hk = h // args.gqa
                q = torch.randn(b, lq, h, 128, dtype=dtype)
                k, v = (torch.randn(b, lk, hk, 128, dtype=dtype) for _ in range(2))
                mask = visible_mask(lq, lk, True, None, "cpu")
                fns = {name: (lambda f=f, q=q, k=k, v=v, m=mask: f(q, k, v, m)) for name, f in providers.items()}
                times = interleaved_times(fns, args.repeats)
                gflop = 4 * b * h * 128 * visible_pairs(lq, lk) / 1e9
                base = statistics.median(times["sdpa"])
                for name, ts in times.items():
                    med = statistics.median(ts)
                    print(f"{case:28s} {dname:9s} {name:14s} {med:10.2f} {min(ts):9.2f} {gflop / med * 1e3:8.1f} "
                          f"{base / med:7.2f}x", flush=True)  # fmt: skip
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
