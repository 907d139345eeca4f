"""The ``lmini`` command: ``info``, ``demo``, ``bench`` and ``profile``.

Subcommands import their modules lazily, so ``lmini info`` stays fast and works with a
partial install.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


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


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, what the build compiled, the backends of each op, and the GPU."""
    import torch

    import lmini_kernels as lk
    from lmini_kernels.dispatch import REGISTRIES
    from lmini_kernels.env import cuda_emulate, triton_interpret

    info = lk.build_info()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"lmini-kernels {lk.__version__}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {triton_version}"
    )
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
    modes = [
        m for m, on in (("TRITON_INTERPRET=1", triton_interpret()), ("LMINI_CUDA_EMULATE=1", cuda_emulate())) if on
    ]
    if modes:
        print(f"verification routes on: {', '.join(modes)}")
    print("backends per op (fastest first; * = can run here):")
    for name in sorted(REGISTRIES):
        reg = REGISTRIES[name]
        avail = set(reg.available())
        cells = []
        for b in reg.backends:
            cells.append(f"{b.name}*" if b.name in avail else b.name)
        print(f"  {name:22s} {'  '.join(cells)}")
        if args.verbose:
            for b in reg.backends:
                why = b.unavailable_reason()
                if why:
                    print(f"      {b.name}: {why}")
    print(_gpu_line())
    return 0


def _delegate(module: str, what: str):
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            print(f"lmini {what}: not available in this install ({exc})", file=sys.stderr)
            return 2
        return int(mod.main(args.rest) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmini", description="lmini-kernels: fused kernels for LLaVA-Mini")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, build, backends per op, GPU")
    p.add_argument("-v", "--verbose", action="store_true", help="say why each unavailable backend is unavailable")
    p.set_defaults(func=cmd_info)
    for name, module, help_ in (
        ("demo", "lmini_tools.demo", "run the reference model end to end on the embedded tiny default"),
        ("bench", "lmini_tools.bench.cli", "kernel benchmarks beside their baselines"),
        ("profile", "lmini_tools.profiling.cli", "FLOPs, memory and roofline suites"),
    ):
        p = sub.add_parser(name, help=help_, add_help=False)
        p.set_defaults(func=_delegate(module, name))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lmini`` console script."""
    # Options after demo/bench/profile belong to that subcommand's own parser.
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "info" and rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
