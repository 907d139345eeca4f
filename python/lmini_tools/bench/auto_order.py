"""Which backend is fastest for each op and shape on this machine: the order ``backend="auto"``
should try (each op's api.py registers its backends in that order).

    python -m lmini_tools.bench.auto_order --device cuda --out auto_order.json

Times every backend that ``auto`` could pick for the inputs (the verification routes, the
Triton interpreter and the CUDA emulator, are not candidates) on each op's shapes: the
LLaVA-Mini shapes of ``profiling/nsight/run_kernels.py`` and a batched one, forward only, with
:func:`lmini_tools.bench.harness.time_ms`. Writes, per op, the registered order, each shape's
milliseconds and fastest-first order, and a suggested order: the backends by their geometric
mean time relative to the fastest on each shape (a backend that cannot run a shape is last).
Interrupted (Ctrl-C, SIGINT), it writes the ops it finished, with ``"complete": false``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lmini_kernels as lk
from lmini_kernels.dispatch import registry
from lmini_tools.args import positive_float
from lmini_tools.bench.harness import environment, time_ms

#: A case: shape name, the tensors that dispatch checks, and a call taking the backend name.
Case = tuple[str, dict[str, torch.Tensor], Callable[[str], Any]]


def _compress(batch: int, grid: int, dim: int, heads: int, device: str, dtype: torch.dtype) -> Case:
    with torch.device(device):
        m = lk.FusedResampler(1, dim, heads).to(dtype).eval()
    x = torch.randn(batch, grid * grid, dim, device=device, dtype=dtype)
    return f"B={batch} N={grid * grid} D={dim} H={heads}", {"x": x}, lambda b: m(x, backend=b)


def _attention(batch: int, lq: int, lk_: int, hq: int, hkv: int, d: int, device: str, dtype: torch.dtype) -> Case:
    q = torch.randn(batch, lq, hq, d, device=device, dtype=dtype)
    k, v = (torch.randn(batch, lk_, hkv, d, device=device, dtype=dtype) for _ in range(2))
    name = f"B={batch} Lq={lq} Lk={lk_} Hq={hq} Hkv={hkv} d={d}"
    return name, {"q": q, "k": k, "v": v}, lambda b: lk.prefusion_attention(q, k, v, causal=True, backend=b)


def _softmax(rows: int, cols: int, device: str, dtype: torch.dtype) -> Case:
    x = torch.randn(rows, cols, device=device, dtype=dtype)
    return f"{rows}x{cols}", {"x": x}, lambda b: lk.row_softmax(x, 0.088, backend=b)


def cases(device: str, dtype: torch.dtype, quick: bool) -> dict[str, list[Case]]:
    """Each op's cases: the GPU shapes, or small ones with ``quick`` (a CPU smoke run)."""
    if quick:
        return {
            "compress": [_compress(2, 5, 32, 4, device, dtype)],
            "prefusion_attention": [_attention(1, 5, 19, 4, 2, 16, device, dtype)],
            "row_softmax": [_softmax(37, 53, device, dtype)],
        }
    return {
        "compress": [_compress(1, 24, 1024, 8, device, dtype), _compress(64, 24, 1024, 8, device, dtype)],
        "prefusion_attention": [
            _attention(1, 44, 621, 32, 32, 128, device, dtype),
            _attention(1, 621, 621, 32, 32, 128, device, dtype),
            _attention(16, 44, 621, 32, 8, 128, device, dtype),
        ],
        "row_softmax": [_softmax(32 * 621, 621, device, dtype), _softmax(64, 4096, device, dtype)],
    }


def candidates(op: str, tensors: dict[str, torch.Tensor]) -> tuple[list[str], dict[str, str]]:
    """The backends ``auto`` could pick on these tensors' device (registered order; the
    verification routes are not among them), and why each other one cannot. Op-specific limits
    (head dims, sizes) show when a candidate runs: it raises NotSupportedError."""
    on = {t.device.type for t in tensors.values()}
    ok, why = [], {}
    for b in registry(op).backends:
        reason = b.unavailable_reason()
        if reason is None and not on <= b.devices:
            reason = f"runs on {', '.join(sorted(b.devices)) or 'no device here'}, not {', '.join(sorted(on))}"
        if reason:
            why[b.name] = reason
        else:
            ok.append(b.name)
    return ok, why


def suggested_order(registered: list[str], shapes: list[dict[str, Any]]) -> list[str]:
    """Backends by the geometric mean of (time / fastest time) over the shapes; a backend that
    ran none of them goes last; ties keep the registered order."""
    score: dict[str, float] = {}
    for name in registered:
        ratios = [s["ms"][name] / min(s["ms"].values()) for s in shapes if name in s["ms"]]
        missing = sum(1 for s in shapes if s["ms"] and name not in s["ms"])
        score[name] = math.inf if not ratios or missing else math.exp(sum(map(math.log, ratios)) / len(ratios))
    return sorted(registered, key=lambda n: (score[n], registered.index(n)))


def measure(
    device: str, dtype: torch.dtype, quick: bool, min_run_time: float, ops: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Time every candidate backend on every case: op -> registered order, shapes (each with
    its milliseconds, fastest-first order and the backends not run, with why) and the suggested
    order. Each op lands in ``ops`` (a fresh dict if None) as soon as it is measured, so that an
    interrupted run keeps the ops it finished."""
    ops = {} if ops is None else ops
    for op, op_cases in cases(device, dtype, quick).items():
        registered = [b.name for b in registry(op).backends]
        shapes = []
        for name, tensors, call in op_cases:
            names, why = candidates(op, tensors)
            ms, errors = {}, dict(why)
            for b in names:
                try:
                    with torch.no_grad():
                        ms[b] = time_ms(lambda b=b, call=call: call(b), device, min_run_time=min_run_time)
                except Exception as exc:  # one failing backend must not end the run
                    errors[b] = f"{type(exc).__name__}: {str(exc)[:300]}"
            order = sorted(ms, key=ms.__getitem__)
            shapes.append({"shape": name, "ms": ms, "order": order, "not_run": errors})
            times = ", ".join(f"{b} {ms[b]:.3f} ms" for b in order) or "no backend ran"
            print(f"{op:20s} {name:40s} {times}", flush=True)
        ran = [s for s in shapes if s["ms"]]
        ops[op] = {"registered_order": registered, "shapes": shapes,
                   "suggested_order": suggested_order(registered, ran)}  # fmt: skip
    return ops


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m lmini_tools.bench.auto_order``."""
    p = argparse.ArgumentParser(prog="python -m lmini_tools.bench.auto_order", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                   help="default: float16 on cuda, float32 on cpu")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--min-run-time", type=positive_float, default=0.1, help="seconds of timed runs per backend")
    p.add_argument("--out", default="auto_order.json", help="the JSON file to write (default ./auto_order.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON document (see the module docstring); print one line per shape."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("auto_order: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    doc: dict[str, Any] = {"environment": dict(environment(args.device), dtype=str(dtype).removeprefix("torch.")),
                           "ops": {}, "complete": False}  # fmt: skip
    try:
        measure(args.device, dtype, args.quick, args.min_run_time, doc["ops"])
        doc["complete"] = True
    except KeyboardInterrupt:  # Ctrl-C, or a time budget's SIGINT (benchmarks/gpu_session.sh)
        print(f"\ninterrupted: writing the {len(doc['ops'])} ops measured so far", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for op, o in doc["ops"].items():
        print(f"{op}: registered {o['registered_order']}, suggested {o['suggested_order']}")
    print(f"auto_order: {out}")
    return 0 if doc["complete"] else 130


if __name__ == "__main__":
    raise SystemExit(main())
