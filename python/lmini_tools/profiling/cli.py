"""``lmini profile``: the FLOPs, memory and roofline suites.

    lmini profile flops [--json] [--text-tokens N] [--convention paper|full] [--no-ablations]
    lmini profile memory [--json] [--gpu-gb 24 [80 ...]] [--text-tokens N]
    lmini profile roofline RESULTS.json [...] [--out DIR] [--bandwidth GB/s] [--tflops T]

Each suite module is imported only when its subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from lmini_tools.args import positive_float, positive_int


def _flops(args: argparse.Namespace) -> int:
    from lmini_tools.profiling import flops

    doc = flops.count_all(args.convention, args.text_tokens, ablations=not args.no_ablations)
    print(json.dumps(doc, indent=2) if args.json else flops.format_table(doc))
    return 0


def _memory(args: argparse.Namespace) -> int:
    from lmini_tools.profiling import memory

    doc = memory.memory_report(gpu_gb=args.gpu_gb, text_tokens=args.text_tokens, measure_gpu=args.measure_gpu)
    print(json.dumps(doc, indent=2) if args.json else memory.format_report(doc))
    return 0


def _roofline(args: argparse.Namespace) -> int:
    from lmini_tools.profiling import roofline

    return roofline.main_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmini profile", description="FLOPs, memory and roofline suites")
    sub = parser.add_subparsers(dest="suite", required=True)

    p = sub.add_parser("flops", help="FLOPs per component, counted on the meta device (FlopCounterMode)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.add_argument(
        "--text-tokens",
        type=positive_int,
        default=43,
        help="text tokens in the prompt besides the image (default 43: the length that reproduces the paper)",
    )
    p.add_argument(
        "--convention",
        choices=("paper", "full"),
        default="paper",
        help="paper: weight matmuls only (2 x params x tokens); full: every matmul, attention included",
    )
    p.add_argument("--no-ablations", action="store_true", help="skip the paper's ablation rows")
    p.set_defaults(func=_flops)

    p = sub.add_parser("memory", help="vision KV cache, predicted peak memory, max video frames")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the tables")
    p.add_argument(
        "--gpu-gb",
        type=positive_float,
        nargs="+",
        default=[24.0, 80.0],
        help="GPU sizes in GiB for the max-frames table (default 24 80)",
    )
    p.add_argument("--text-tokens", type=positive_int, default=43, help="text tokens of the question (default 43)")
    p.add_argument(
        "--measure-gpu",
        action="store_true",
        help="on a CUDA machine also run a reduced model and print torch.cuda.max_memory_allocated and NVML samples",
    )
    p.set_defaults(func=_memory)

    p = sub.add_parser("roofline", help="achieved GB/s and TFLOP/s of benchmark results against the floor")
    p.add_argument("results", nargs="+", help="JSON files written by `lmini bench` (or the minimal schema)")
    p.add_argument("--out", default="profiling/results", help="directory for roofline.png and roofline.md")
    p.add_argument("--bandwidth", type=positive_float, help="device copy bandwidth in GB/s (default: measure)")
    p.add_argument("--tflops", type=positive_float, help="device matmul rate in TFLOP/s (default: measure)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    p.set_defaults(func=_roofline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lmini profile`` (``argv`` = the arguments after ``profile``)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
