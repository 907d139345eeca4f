"""``lmini bench <suite>``: run a registered benchmark suite and write its results.

Registering a suite is one line in :data:`SUITES`: its name, the ``module:function`` of a
``run(ctx: BenchContext) -> None`` (see :mod:`lmini_tools.bench.harness`) and its help. A suite's
own options (shapes in :data:`SHAPES`, modes in :data:`MODES`) are declared here, so that
``--help`` imports no torch; the suite reads them as ``ctx.options``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from lmini_tools.args import DTYPES, UsageError, positive_float, positive_int, resolve_device, writable_dir

SUITES: dict[str, tuple[str, str]] = {
    "compress": ("lmini_tools.bench.compress:run", "the compressor: official module vs ours"),
    "prefusion": ("lmini_tools.bench.prefusion:run", "pre-fusion attention and the pre-fusion module"),
}

#: shape options per suite (declared here, not imported, so that --help stays fast)
SHAPES: dict[str, list[tuple[str, str]]] = {
    "compress": [
        ("--batch", "images (frames) per call: one custom case instead of the default cases"),
        ("--grid", "patches per side, N = grid^2 (default 24)"),
        ("--dim", "embed_dim (default 1024)"),
        ("--heads", "attention heads (default 8)"),
        ("--queries-side", "C: Q = C^2 compressed tokens (default 1)"),
    ],
    "prefusion": [],
}


#: suites that also time the backward (ops with autograd), and their modes
MODES: dict[str, tuple[str, ...]] = {"compress": ("fwd", "fwd+bwd")}


def _load(name: str):
    module, func = SUITES[name][0].split(":")
    return getattr(importlib.import_module(module), func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmini bench", description="kernel benchmarks beside their baselines")
    sub = p.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, (_, help_) in SUITES.items():
        s = sub.add_parser(name, help=help_, description=f"lmini bench {name}: {help_}")
        s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="default: cuda when present, else cpu")  # fmt: skip
        s.add_argument("--dtype", choices=DTYPES, default=None, help="default: float32 on CPU, float16 on GPU")
        s.add_argument("--providers", default=None, help="comma-separated providers to measure (default: all)")
        s.add_argument("--quick", action="store_true", help="fewer cases and shorter timing (a smoke run)")
        s.add_argument("--min-run-time", type=positive_float, default=1.0, help="seconds of timed runs per row (CPU)")
        s.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
        s.add_argument("--out", default=None, help="results folder (default: ./benchmarks/results)")
        s.add_argument("--no-write", action="store_true", help="print only, write no files")
        s.add_argument("--goals", action="store_true", help="also print the project's performance goals vs this run")
        for flag, h in SHAPES[name]:
            s.add_argument(flag, type=positive_int, default=None, help=h)
        if name in MODES:
            s.add_argument("--mode", choices=MODES[name], default="fwd",
                           help="fwd: inference; fwd+bwd: forward and backward into x and every parameter")  # fmt: skip
    return p


def repro_args(args: argparse.Namespace, device: str) -> list[str]:
    """The arguments that set this run up again (device, dtype, shapes, --quick)."""
    out = ["--device", device, "--dtype", args.dtype]
    for flag, _ in SHAPES[args.suite]:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    if getattr(args, "mode", "fwd") != "fwd":
        out += ["--mode", args.mode]
    if args.quick:
        out.append("--quick")
    if args.min_run_time != 1.0:
        out += ["--min-run-time", str(args.min_run_time)]
    return [shlex.quote(a) for a in out]


def main(argv: list[str] | None = None) -> int:
    """Run one suite: measure the copy bandwidth, run the suite, write JSON/CSV/PNG, print a table."""
    args = build_parser().parse_args(argv)
    out_dir = None if args.no_write else writable_dir(args.out or "benchmarks/results")  # before any measurement
    import torch

    from lmini_tools.bench.harness import (
        BenchContext,
        copy_bandwidth_gbps,
        environment,
        markdown_table,
        matmul_tflops,
        write_results,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.dtype = args.dtype or ("float16" if device == "cuda" else "float32")
    wanted = None if args.providers is None else frozenset(p.strip() for p in args.providers.split(",") if p.strip())
    env = dict(environment(device), dtype=args.dtype, mode=getattr(args, "mode", "fwd"))
    print(f"lmini bench {args.suite}: {env['device_name']}, {env['threads']} threads, {args.dtype}, "
          f"isa {env['isa']}, torch {env['torch']}, {env['date']}")  # fmt: skip
    run_time = 0.3 if args.quick and args.min_run_time == 1.0 else args.min_run_time  # --quick: shorter by default
    ctx = BenchContext(args.suite, device, quick=args.quick, min_run_time=run_time,
                       dtype=getattr(torch, args.dtype), providers=wanted,
                       repro_args=repro_args(args, device), options=args)  # fmt: skip
    ctx.copy_gbps = copy_bandwidth_gbps(device)
    gemm_n, gemm_dtype = (8192, torch.float16) if device == "cuda" else (2048, torch.float32)
    ctx.gemm_tflops = matmul_tflops(device, gemm_n, gemm_dtype)
    print(f"copy bandwidth (same run): {ctx.copy_gbps:.1f} GB/s (read + write); "
          f"GEMM rate: {ctx.gemm_tflops * 1e3:.1f} GFLOP/s ({gemm_n}^3 {str(gemm_dtype)[6:]} torch.mm)")  # fmt: skip
    interrupted = False
    try:
        _load(args.suite)(ctx)
    except KeyboardInterrupt:  # Ctrl-C, or a time budget's SIGINT (benchmarks/gpu_session.sh): keep the rows
        interrupted = True
        env["interrupted"] = True
        print(f"lmini bench {args.suite}: interrupted; keeping the {len(ctx.rows)} rows finished before it",
              file=sys.stderr)  # fmt: skip
    if not interrupted and wanted is not None and wanted - ctx.seen_providers:
        unknown = ", ".join(sorted(wanted - ctx.seen_providers))
        raise UsageError(
            f"--providers: unknown {unknown}; this suite's providers: {', '.join(sorted(ctx.seen_providers))}"
        )
    print()
    print(markdown_table(ctx))
    noisy = [r for r in ctx.rows if r.noisy]
    if noisy:
        print(f"warning: {len(noisy)} of {len(ctx.rows)} rows are too noisy to trust (marked 'noisy'); "
              "each row's repro command is in the JSON")  # fmt: skip
    if out_dir is not None and ctx.rows:
        for kind, path in write_results(ctx, env, out_dir).items():
            print(f"{kind}: {path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
