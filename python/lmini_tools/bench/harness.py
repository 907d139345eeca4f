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
import shlex
import subprocess
import tempfile
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
        # the CPU vector ISA torch's kernels use (ours pick theirs the same way, capped by LMINI_CPU_ISA)
        "isa": torch.backends.cpu.get_cpu_capability() if device == "cpu" else device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def time_samples(fn: Callable[[], Any], device: str, *, min_run_time: float = 1.0) -> list[float]:
    """Milliseconds of each timed run of ``fn()`` after a warm-up call.

    CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of runs for at least
    ``min_run_time`` s; a slow callable still runs at least once after the warm-up), one sample
    per block. GPU: ``triton.testing.do_bench`` (CUDA events), one sample per run."""
    fn()  # warm-up: caches, compilation, lazy initialisation
    if device == "cuda":
        import triton.testing

        rep = max(100, int(min_run_time * 1000))
        return [float(t) for t in triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="all")]
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return [t * 1e3 for t in m.blocked_autorange(min_run_time=min_run_time).times]


def quantiles(samples: list[float]) -> dict[str, float]:
    """p20, p50 (median), p80, the minimum and the spread (p80 - p20) / p50 of ``samples``
    (linear interpolation, as numpy.percentile)."""
    t = torch.tensor(samples, dtype=torch.float64)
    p20, p50, p80 = (float(torch.quantile(t, q)) for q in (0.2, 0.5, 0.8))
    return {"p20": p20, "p50": p50, "p80": p80, "min": float(t.min()), "spread": (p80 - p20) / p50 if p50 else 0.0}


#: A row is flagged as too noisy to trust above this spread or below this many samples.
NOISY_SPREAD = 0.10
MIN_SAMPLES = 5


def time_stats(fn: Callable[[], Any], device: str, *, min_run_time: float = 1.0) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` (see :func:`time_samples`). The minimum is
    reported beside the median because CPUs here are shared: other processes lengthen some
    runs, rarely shorten one."""
    q = quantiles(time_samples(fn, device, min_run_time=min_run_time))
    return q["p50"], q["min"]


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
    frac_gemm: float = 0.0  # tflops over the same run's large-GEMM rate (the compute roof)
    speedup: float | None = None  # over the case's baseline provider (medians)
    ms_min: float = 0.0  # the fastest run, beside the median
    baseline: str | None = None
    note: str = ""
    p20: float = 0.0  # ms quantiles of the samples (p50 is ms)
    p80: float = 0.0
    spread: float = 0.0  # (p80 - p20) / p50
    samples: int = 0
    noisy: bool = False  # spread > NOISY_SPREAD or fewer than MIN_SAMPLES samples
    repro: str = ""  # the command that measures this row again


@dataclass
class BenchContext:
    """What a suite sees: the device and options, and :meth:`measure` to record a result."""

    suite: str
    device: str
    quick: bool = False
    min_run_time: float = 1.0
    copy_gbps: float = 0.0
    gemm_tflops: float = 0.0  # a large fp32 (CPU) / fp16 (GPU) torch.mm in the same run: the compute roof
    rows: list[Row] = field(default_factory=list)
    verbose: bool = True
    dtype: torch.dtype | None = None  # None: the suite's default (fp32 on CPU, fp16 on GPU)
    providers: frozenset[str] | None = None  # None: every provider
    seen_providers: set[str] = field(default_factory=set)
    repro_args: list[str] = field(default_factory=list)  # the CLI arguments that set up this run
    options: Any = None  # the suite's parsed options (shapes, --goals), or None

    def dtype_or(self, default: torch.dtype) -> torch.dtype:
        return self.dtype or default

    def wants(self, provider: str) -> bool:
        """Whether ``provider`` is measured in this run (``--providers``); suites may skip
        costly set-up for providers that are filtered out."""
        self.seen_providers.add(provider)
        return self.providers is None or provider in self.providers

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
        """Time ``fn`` and record it; a provider that raises is reported and skipped, and one
        filtered out by ``--providers`` is not run."""
        if not self.wants(provider):
            return None
        try:
            samples = time_samples(
                fn, self.device, min_run_time=self.min_run_time if min_run_time is None else min_run_time
            )
        except Exception as exc:  # one broken provider must not end the run
            if self.verbose:
                print(f"  {case:28s} {provider:26s} FAILED: {type(exc).__name__}: {str(exc)[:200]}")
            return None
        q = quantiles(samples)
        ms = q["p50"]
        gbps = nbytes / (ms * 1e-3) / 1e9
        noisy = q["spread"] > NOISY_SPREAD or len(samples) < MIN_SAMPLES
        repro = " ".join(["lmini bench", self.suite, *self.repro_args, "--providers", shlex.quote(provider)])
        row = Row(self.suite, case, provider, ms, nbytes, flops, gbps, flops / (ms * 1e-3) / 1e12,
                  gbps / self.copy_gbps if self.copy_gbps else 0.0,
                  frac_gemm=flops / (ms * 1e-3) / 1e12 / self.gemm_tflops if self.gemm_tflops else 0.0,
                  baseline=baseline, note=note,
                  ms_min=q["min"], p20=q["p20"], p80=q["p80"], spread=q["spread"], samples=len(samples),
                  noisy=noisy, repro=repro)  # fmt: skip
        if baseline is not None:
            base = next((r for r in self.rows if r.case == case and r.provider == baseline), None)
            row.speedup = base.ms / ms if base else None
        self.rows.append(row)
        if self.verbose:
            sp = f"{row.speedup:9.1f}x" if row.speedup else " " * 10
            print(f"  {case:28s} {provider:26s} {ms:10.3f} ms [{q['p20']:.3f}, {q['p80']:.3f}] {gbps:8.2f} GB/s "
                  f"{row.frac_copy_bw:6.1%} of copy {row.tflops * 1e3:8.1f} GFLOP/s {row.frac_gemm:6.1%} of GEMM "
                  f"{sp}")  # fmt: skip
            if noisy:
                print(f"    warning: too noisy to trust ({len(samples)} samples, spread {q['spread']:.0%} between "
                      f"p20 and p80); rerun on a quiet machine or with --min-run-time: {repro}")  # fmt: skip
        return row


def write_results(ctx: BenchContext, env: dict[str, Any], out_dir: Path | None = None) -> dict[str, Path]:
    """JSON (environment + rows), CSV (rows, environment columns repeated) and a PNG plot."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = unique_base(out_dir, f"{ctx.suite}-{ctx.device}-{env['date'].replace(':', '').replace('-', '')}")
    paths = {"json": base.with_suffix(".json"), "csv": base.with_suffix(".csv")}
    payload = {"suite": ctx.suite, "environment": dict(env, copy_gbps=ctx.copy_gbps, gemm_tflops=ctx.gemm_tflops),
               "rows": [asdict(r) for r in ctx.rows]}  # fmt: skip
    with atomic_write(paths["json"]) as f:
        f.write(json.dumps(payload, indent=1) + "\n")
    with atomic_write(paths["csv"]) as f:
        env_cols = ["device_name", "threads", "torch", "triton", "dtype", "isa", "date", "commit", "load_avg_1m"]
        fields = list(asdict(ctx.rows[0]).keys()) if ctx.rows else ["suite"]
        w = csv.DictWriter(f, fieldnames=fields + ["copy_gbps"] + env_cols)
        w.writeheader()
        for r in ctx.rows:
            w.writerow({**asdict(r), "copy_gbps": ctx.copy_gbps, **{k: env.get(k) for k in env_cols}})
    png = plot(ctx, env, base.with_suffix(".png"))
    if png is not None:
        paths["png"] = png
    return paths


def unique_base(out_dir: Path, stem: str) -> Path:
    """``out_dir / stem``, or ``stem-2``, ``stem-3``... when a run of the same second wrote there."""
    base, n = out_dir / stem, 1
    while any(base.with_suffix(ext).exists() for ext in (".json", ".csv", ".png")):
        n += 1
        base = out_dir / f"{stem}-{n}"
    return base


class atomic_write:  # noqa: N801 (used as a context manager, like open)
    """Write a text file through a temporary file in the same folder, renamed into place on
    success: an interrupted run leaves no half-written result."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.f = os.fdopen(fd, "w", newline="")
        return self.f

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


def plot(ctx: BenchContext, env: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of milliseconds (log scale) per case and provider; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("PNG skipped: matplotlib is not installed (pip install matplotlib, or lmini-kernels[plot])")
        return None
    cases = list(dict.fromkeys(r.case for r in ctx.rows))
    providers = list(dict.fromkeys(r.provider for r in ctx.rows))
    if not cases:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(cases)), 4.5))
    width = 0.8 / len(providers)
    for i, prov in enumerate(providers):
        xs, ys, err = [], [], [[], []]
        for j, case in enumerate(cases):
            r = next((r for r in ctx.rows if r.case == case and r.provider == prov), None)
            if r is not None:
                xs.append(j + (i - (len(providers) - 1) / 2) * width)
                ys.append(r.ms)
                err[0].append(max(0.0, r.ms - (r.p20 or r.ms)))
                err[1].append(max(0.0, (r.p80 or r.ms) - r.ms))
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=prov)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), cases, fontsize=8)
    ax.set_ylabel("ms (median, p20-p80 bars, log scale)")
    ax.set_title(f"{ctx.suite} on {env['device_name']}, {env['threads']} threads, {env['date']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(ctx: BenchContext) -> str:
    """The results as a Markdown table (for the README)."""
    lines = [
        "| case | provider | ms (median) | p20-p80 | GB/s | of copy BW | GFLOP/s | of GEMM | speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ctx.rows:
        sp = f"{r.speedup:.1f}x" if r.speedup else "-"
        noisy = " (noisy)" if r.noisy else ""
        lines.append(f"| {r.case} | {r.provider} | {r.ms:.3f}{noisy} | {r.p20:.3f}-{r.p80:.3f} | {r.gbps:.2f} "
                     f"| {r.frac_copy_bw:.0%} | {r.tflops * 1e3:.1f} | {r.frac_gemm:.0%} | {sp} |")  # fmt: skip
    return "\n".join(lines)
