"""The benchmark harness every suite shares: timing, copy bandwidth, results files, plots.

A suite is a function ``run(ctx: BenchContext) -> None`` that calls :meth:`BenchContext.measure`
once per (case, provider). The harness times each callable (CPU: ``torch.utils.benchmark``
median with the thread count stated; GPU: ``triton.testing.do_bench`` median, CUDA events),
measures the device's copy bandwidth in the same run, derives GB/s, TFLOP/s, the fraction of
copy bandwidth and the speedup over the case's baseline provider, and writes
``benchmarks/results/<suite>-<device>-<date>.{json,csv,png}`` with the device, versions and date.

Benchmarks are never tests: numbers depend on the machine and on whatever else runs on it, so
every comparison that counts is between providers measured in one run.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path("benchmarks") / "results"  # relative to the working directory


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform), with the core count."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical cores)"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_name()


def environment(device: str) -> dict[str, Any]:
    """Device, versions, thread count, date and commit: stored with every result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    import lmini_kernels

    return {
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "lmini_kernels": lmini_kernels.__version__,
        "commit": commit,
        # Other processes share a CPU: the 1-minute load average at the start says how much.
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def time_stats(fn: Callable[[], Any], device: str, *, min_run_time: float = 1.0) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` after a warm-up call.

    CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (at least ``min_run_time`` s of
    runs; a slow callable still runs at least once after the warm-up). GPU: ``do_bench``. The
    minimum is reported beside the median because CPUs here are shared: other processes
    lengthen some runs, rarely shorten one."""
    fn()  # warm-up: caches, compilation, lazy initialisation
    if device == "cuda":
        import triton.testing

        rep = max(100, int(min_run_time * 1000))
        times = triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="all")
        return float(torch.tensor(times).median()), float(min(times))
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    res = m.blocked_autorange(min_run_time=min_run_time)
    return res.median * 1e3, min(res.times) * 1e3


def time_ms(fn: Callable[[], Any], device: str, *, min_run_time: float = 1.0) -> float:
    """Median milliseconds of ``fn()`` (see :func:`time_stats`)."""
    return time_stats(fn, device, min_run_time=min_run_time)[0]


def interleaved_times(providers: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds of each provider's ``repeats`` runs, the providers run in turn (after one
    warm-up each), so that another process's load on a shared machine spreads over all of them
    instead of landing on whichever runs at that moment. CPU wall time."""
    import time

    times: dict[str, list[float]] = {name: [] for name in providers}
    for f in providers.values():
        f()
    for _ in range(repeats):
        for name, f in providers.items():
            t = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t) * 1e3)
    return times


def copy_bandwidth_gbps(
    device: str, nbytes: int = 256 * 2**20, *, min_run_time: float = 0.5, best: bool = False
) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written per second) of ``dst.copy_(src)``
    over ``nbytes`` (larger than any last-level cache), measured like any provider: from the
    median time, or from the fastest run with ``best`` (a ceiling)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    median, fastest = time_stats(lambda: dst.copy_(src), device, min_run_time=min_run_time)
    return 2 * nbytes / ((fastest if best else median) * 1e-3) / 1e9


def matmul_tflops(device: str, n: int, dtype: torch.dtype, *, min_run_time: float = 0.5, best: bool = False) -> float:
    """TFLOP/s (2 n^3 per product) of an n x n ``torch.mm`` in ``dtype``: from the median time,
    or from the fastest run with ``best`` (a ceiling)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    median, fastest = time_stats(lambda: torch.mm(a, b), device, min_run_time=min_run_time)
    return 2 * n**3 / ((fastest if best else median) * 1e-3) / 1e12


@dataclass
class Row:
    """One (case, provider) measurement."""

    suite: str
    case: str
    provider: str
    ms: float
    bytes: int
    flops: int
    gbps: float
    tflops: float
    frac_copy_bw: float
    speedup: float | None = None  # over the case's baseline provider (medians)
    ms_min: float = 0.0  # the fastest run, beside the median
    baseline: str | None = None
    note: str = ""


@dataclass
class BenchContext:
    """What a suite sees: the device and options, and :meth:`measure` to record a result."""

    suite: str
    device: str
    quick: bool = False
    min_run_time: float = 1.0
    copy_gbps: float = 0.0
    rows: list[Row] = field(default_factory=list)
    verbose: bool = True

    def measure(
        self,
        case: str,
        provider: str,
        fn: Callable[[], Any],
        *,
        nbytes: int,
        flops: int = 0,
        baseline: str | None = None,
        note: str = "",
        min_run_time: float | None = None,
    ) -> Row | None:
        """Time ``fn`` and record it; a provider that raises is reported and skipped."""
        try:
            ms, ms_min = time_stats(
                fn, self.device, min_run_time=self.min_run_time if min_run_time is None else min_run_time
            )
        except Exception as exc:  # one broken provider must not end the run
            if self.verbose:
                print(f"  {case:28s} {provider:26s} FAILED: {type(exc).__name__}: {str(exc)[:200]}")
            return None
        gbps = nbytes / (ms * 1e-3) / 1e9
        row = Row(self.suite, case, provider, ms, nbytes, flops, gbps, flops / (ms * 1e-3) / 1e12,
                  gbps / self.copy_gbps if self.copy_gbps else 0.0, baseline=baseline, note=note,
                  ms_min=ms_min)  # fmt: skip
        if baseline is not None:
            base = next((r for r in self.rows if r.case == case and r.provider == baseline), None)
            row.speedup = base.ms / ms if base else None
        self.rows.append(row)
        if self.verbose:
            sp = f"{row.speedup:9.1f}x" if row.speedup else " " * 10
            print(f"  {case:28s} {provider:26s} {ms:10.3f} ms (min {ms_min:9.3f}) {gbps:8.2f} GB/s "
                  f"{row.frac_copy_bw:6.1%} of copy {sp}")  # fmt: skip
        return row


def write_results(ctx: BenchContext, env: dict[str, Any], out_dir: Path | None = None) -> dict[str, Path]:
    """JSON (environment + rows), CSV (rows, environment columns repeated) and a PNG plot."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = env["date"].replace(":", "").replace("-", "")
    base = out_dir / f"{ctx.suite}-{ctx.device}-{stamp}"
    paths = {"json": base.with_suffix(".json"), "csv": base.with_suffix(".csv")}
    payload = {"suite": ctx.suite, "environment": dict(env, copy_gbps=ctx.copy_gbps),
               "rows": [asdict(r) for r in ctx.rows]}  # fmt: skip
    paths["json"].write_text(json.dumps(payload, indent=1) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        env_cols = ["device_name", "threads", "torch", "triton", "date", "commit", "load_avg_1m"]
        fields = list(asdict(ctx.rows[0]).keys()) if ctx.rows else ["suite"]
        w = csv.DictWriter(f, fieldnames=fields + ["copy_gbps"] + env_cols)
        w.writeheader()
        for r in ctx.rows:
            w.writerow({**asdict(r), "copy_gbps": ctx.copy_gbps, **{k: env[k] for k in env_cols}})
    png = plot(ctx, env, base.with_suffix(".png"))
    if png is not None:
        paths["png"] = png
    return paths


def plot(ctx: BenchContext, env: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of milliseconds (log scale) per case and provider; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = list(dict.fromkeys(r.case for r in ctx.rows))
    providers = list(dict.fromkeys(r.provider for r in ctx.rows))
    if not cases:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(cases)), 4.5))
    width = 0.8 / len(providers)
    for i, prov in enumerate(providers):
        xs, ys = [], []
        for j, case in enumerate(cases):
            r = next((r for r in ctx.rows if r.case == case and r.provider == prov), None)
            if r is not None:
                xs.append(j + (i - (len(providers) - 1) / 2) * width)
                ys.append(r.ms)
        ax.bar(xs, ys, width, label=prov)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), cases, fontsize=8)
    ax.set_ylabel("ms (median, log scale)")
    ax.set_title(f"{ctx.suite} on {env['device_name']}, {env['threads']} threads, {env['date']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(ctx: BenchContext) -> str:
    """The results as a Markdown table (for the README)."""
    lines = [
        "| case | provider | ms (median) | ms (min) | GB/s | of copy BW | speedup |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in ctx.rows:
        sp = f"{r.speedup:.1f}x" if r.speedup else "-"
        lines.append(f"| {r.case} | {r.provider} | {r.ms:.3f} | {r.ms_min:.3f} | {r.gbps:.2f} | {r.frac_copy_bw:.0%} "
                     f"| {sp} |")  # fmt: skip
    return "\n".join(lines)
