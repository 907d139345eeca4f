"""The ``lmini`` command: ``info``, ``demo``, ``bench``, ``profile``, ``video-dist`` and ``chat``.

Subcommands import their modules lazily, so ``lmini info`` stays fast and works with a
partial install.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys

from lmini_tools.args import UsageError


def _gpu_line() -> str:
    """One line about the GPU(s), through NVML; a clean message when there is none."""
    try:
        import pynvml
    except ImportError:
        return "GPU: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"GPU: none found (NVML: {exc})"
    try:
        n = pynvml.nvmlDeviceGetCount()
        parts = []
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            parts.append(f"[{i}] {name}, {mem:.0f} GiB, sm_{major}{minor}")
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        return f"GPU: {n} device(s), driver {driver}: " + "; ".join(parts)
    finally:
        pynvml.nvmlShutdown()


def info_dict() -> dict:
    """What ``lmini info --json`` prints: versions, the build record, backends per op, the GPU."""
    import torch

    import lmini_kernels as lk
    from lmini_kernels.dispatch import REGISTRIES
    from lmini_kernels.env import cuda_emulate, triton_interpret

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    ops = {}
    for name in sorted(REGISTRIES):
        reg = REGISTRIES[name]
        avail = set(reg.available())
        ops[name] = [
            {"backend": b.name, "available": b.name in avail, "why_not": b.unavailable_reason()} for b in reg.backends
        ]
    return {
        "lmini_kernels": lk.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "build": lk.build_info(),
        "verification_routes": {"TRITON_INTERPRET": triton_interpret(), "LMINI_CUDA_EMULATE": cuda_emulate()},
        "ops": ops,
        "gpu": _gpu_line(),
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, what the build compiled, the backends of each op, and the GPU."""
    doc = info_dict()
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    info = doc["build"]
    print(f"lmini-kernels {doc['lmini_kernels']}")
    print(f"python {doc['python']}, torch {doc['torch']} (CUDA {doc['torch_cuda']}), triton {doc['triton'] or '-'}")
    if info["extension_loaded"]:
        archs = ";".join(info.get("cuda_archs") or []) or "-"
        print(
            f"build: backends compiled {', '.join(info['backends_compiled'])}; CUDA archs {archs}; "
            f"nvcc {info.get('nvcc') or '-'}; built against torch {info.get('torch')}"
        )
        if info.get("cuda_skipped_because"):
            print(f"       CUDA kernels not built: {info['cuda_skipped_because']}")
    else:
        print(f"build: {info['extension_error']}")
    print(f"host SIMT emulator: {'built' if info['emulator_loaded'] else 'not built'}")
    modes = [f"{m}=1" for m, on in doc["verification_routes"].items() if on]
    if modes:
        print(f"verification routes on: {', '.join(modes)}")
    print("backends per op (auto order; * = can run here):")
    for name, backends in doc["ops"].items():
        print(f"  {name:22s} {'  '.join(b['backend'] + ('*' if b['available'] else '') for b in backends)}")
        if args.verbose:
            for b in backends:
                if b["why_not"]:
                    print(f"      {b['backend']}: {b['why_not']}")
    print(doc["gpu"])
    return 0


def _delegate(module: str, what: str):
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"not available in this install ({exc})") from exc
        return int(mod.main(args.rest) or 0)

    return run


def _version() -> str:
    """The installed distribution's version, without importing torch."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("lmini-kernels")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmini", description="lmini-kernels: fused kernels for LLaVA-Mini")
    parser.add_argument("--version", action="version", version=f"lmini-kernels {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, build, backends per op, GPU")
    p.add_argument("-v", "--verbose", action="store_true", help="say why each unavailable backend is unavailable")
    p.add_argument("--json", action="store_true", help="print the same as one JSON document")
    p.set_defaults(func=cmd_info)
    for name, module, help_ in (
        ("demo", "lmini_tools.demo", "run the reference model end to end on the embedded tiny default"),
        ("bench", "lmini_tools.bench.cli", "kernel benchmarks beside their baselines"),
        ("profile", "lmini_tools.profiling.cli", "FLOPs, memory and roofline suites"),
        ("video-dist", "lmini_tools.video_dist", "a video's frames sharded over torchrun ranks, checked against one"),
        ("chat", "lmini_tools.chat", "ask a checkpoint folder a question about an image or a video"),
    ):
        # the subcommand's own parser reads the rest (its --help included)
        p = sub.add_parser(name, help=help_, add_help=False)
        p.set_defaults(func=_delegate(module, name))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmini`` console script.

    A user's mistake (a bad argument, a missing file, an unavailable backend or device) ends
    in one line on stderr and exit status 2; ``--debug`` shows the traceback instead."""
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "info" and rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"lmini {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`lmini info | head`): nothing left to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so that the interpreter's final flush is quiet
        return 0
    except (UsageError, ValueError, OSError) as exc:  # NotSupportedError is a ValueError
        if args.debug:
            raise
        what = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        print(f"lmini {args.command}: error: {what}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
