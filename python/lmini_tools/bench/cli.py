"""``lmini bench <suite>``: run a registered benchmark suite and write its results.

Registering a suite is one line in :data:`SUITES`: its name and the ``module:function`` of a
``run(ctx: BenchContext) -> None`` (see :mod:`lmini_tools.bench.harness`).
"""

from __future__ import annotations

import argparse
import importlib

import torch

SUITES: dict[str, str] = {
    "compress": "lmini_tools.bench.compress:run",
    "prefusion": "lmini_tools.bench.prefusion:run",
}


def _load(name: str):
    module, func = SUITES[name].split(":")
    return getattr(importlib.import_module(module), func)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmini bench", description="kernel benchmarks beside their baselines")
    p.add_argument("suite", choices=sorted(SUITES), help="which suite to run")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present, else cpu")
    p.add_argument("--quick", action="store_true", help="fewer cases and shorter timing (a smoke run)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed runs per measurement (CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="results directory (default: benchmarks/results)")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one suite: measure the copy bandwidth, run the suite, write JSON/CSV/PNG, print a table."""
    from lmini_tools.bench.harness import (
        BenchContext,
        copy_bandwidth_gbps,
        environment,
        markdown_table,
        write_results,
    )

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    print(f"lmini bench {args.suite}: {env['device_name']}, {env['threads']} threads, torch {env['torch']}, "
          f"{env['date']}")  # fmt: skip
    ctx = BenchContext(args.suite, device, quick=args.quick, min_run_time=0.3 if args.quick else args.min_run_time)
    ctx.copy_gbps = copy_bandwidth_gbps(device)
    print(f"copy bandwidth (same run): {ctx.copy_gbps:.1f} GB/s (read + write)")
    _load(args.suite)(ctx)
    print()
    print(markdown_table(ctx))
    if not args.no_write and ctx.rows:
        for kind, path in write_results(ctx, env, args.out).items():
            print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
