"""Roofline of benchmark results: achieved GB/s and TFLOP/s, arithmetic intensity, fraction of floor.

Input: JSON files from ``lmini bench``, or any file in the minimal schema below. Each result
needs a time, the FLOPs the op must do and the fewest bytes it must move (performance.md):

.. code-block:: json

    {"device": "cpu: 2 cores ...", "date": "2026-11-25",
     "device_peaks": {"bandwidth_gbs": 12.5, "tflops": 0.2},          (optional)
     "results": [{"op": "compress", "backend": "cpu", "label": "1x576x1024 fp16",
                  "median_s": 0.0012, "flops": 2.3e7, "bytes": 1.18e6}]}

The ``lmini bench`` JSON (``{"suite", "environment": {"device_name", "threads", "date",
"copy_gbps", ...}, "rows": [{"case", "provider", "ms", "bytes", "flops", ...}]}``) is read as
is: its same-run copy bandwidth becomes the bandwidth roof unless one is given. Accepted
aliases: a top-level list instead of ``results``; time as ``median_s``, ``time_s``,
``median_ms``, ``time_ms``, ``ms`` or ``median_us``; bytes as ``bytes`` or ``min_bytes``; a
``name`` instead of op/backend/label (or suite/case/provider). Results without a time or bytes
are skipped with a note; rows with no FLOPs recorded are in the table (memory roof only) but
not on the plot.

The device's peaks come from ``--bandwidth``/``--tflops``, else the file's ``device_peaks``,
else are measured here (:func:`measure_peaks`: a large copy for bandwidth, a large matmul for
the rate; on the GPU in float16, on the CPU in float32 with the thread count stated).

Floor time = max(FLOPs / peak rate, bytes / peak bandwidth); fraction of floor = floor / time.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

TIME_KEYS = {"median_s": 1.0, "time_s": 1.0, "median_ms": 1e-3, "time_ms": 1e-3, "ms": 1e-3, "median_us": 1e-6}


@dataclass
class Peaks:
    """Device ceilings: copy bandwidth (GB/s, 1e9 bytes) and matmul rate (TFLOP/s)."""

    bandwidth_gbs: float
    tflops: float
    source: str

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the two roofs meet."""
        return self.tflops * 1e12 / (self.bandwidth_gbs * 1e9)


@dataclass
class Row:
    name: str
    time_s: float
    flops: float
    bytes: float
    gbs: float
    tflops: float
    intensity: float
    floor_s: float
    fraction_of_floor: float
    bound: str


def measure_peaks(
    device: str | None = None, *, copy_mb: int = 256, matmul_n: int | None = None, min_run_time: float = 0.5
) -> Peaks:
    """Measure the copy bandwidth and matmul rate of ``device`` (default: cuda if present, else cpu).

    Bandwidth counts read + write of a ``copy_mb`` MB tensor copy; the rate is 2 n^3 / time of
    an n x n matmul (float16 on the GPU, float32 on the CPU). From the fastest run (a ceiling is
    the best the device does), timed by the benchmark harness."""
    import torch

    from lmini_tools.bench.harness import copy_bandwidth_gbps, matmul_tflops

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype, n = (torch.float16, matmul_n or 8192) if device == "cuda" else (torch.float32, matmul_n or 2048)
    gbps = copy_bandwidth_gbps(device, copy_mb * 1_000_000, min_run_time=min_run_time, best=True)
    tflops = matmul_tflops(device, n, dtype, min_run_time=min_run_time, best=True)
    if device == "cuda":
        what = f"measured on {torch.cuda.get_device_name()}: {copy_mb} MB copy, {n}^3 fp16 matmul"
    else:
        what = f"measured on cpu ({torch.get_num_threads()} threads): {copy_mb} MB copy, {n}^3 fp32 matmul"
    return Peaks(gbps, tflops, what)


def load_results(paths: list[str]) -> tuple[list[dict], dict, list[str]]:
    """Results from every file, the first file's metadata (device, date, device_peaks), notes."""
    results, meta, notes = [], {}, []
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text())
        except json.JSONDecodeError as exc:  # name the file and where, in one line
            where = f"line {exc.lineno} column {exc.colno}"
            raise ValueError(f"{p}: not a JSON results file ({exc.msg} at {where})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{p}: not a JSON results file (not UTF-8 text)") from None
        rows = doc if isinstance(doc, list) else doc.get("results", doc.get("rows"))
        if not isinstance(rows, list):
            raise ValueError(f"results: {p} has no 'results' or 'rows' list (expected the lmini bench JSON)")
        if isinstance(doc, dict) and not meta:
            meta = {k: doc[k] for k in ("device", "date", "device_peaks") if k in doc}
            env = doc.get("environment") or {}
            if "device" not in meta and env.get("device_name"):
                threads = f", {env['threads']} threads" if env.get("device") == "cpu" and env.get("threads") else ""
                meta["device"] = f"{env['device_name']}{threads}"
            if "date" not in meta and env.get("date"):
                meta["date"] = env["date"]
            if "device_peaks" not in meta and env.get("copy_gbps"):
                meta["device_peaks"] = {"bandwidth_gbs": float(env["copy_gbps"])}
        for r in rows:
            results.append(r)
    if not results:
        notes.append("no results in the input files")
    return results, meta, notes


def _name(r: dict) -> str:
    if "name" in r:
        return str(r["name"])
    keys = ("op", "backend", "label") if "op" in r else ("suite", "case", "provider")
    parts = [str(r[k]) for k in keys if r.get(k) not in (None, "")]
    return "/".join(parts) or "result"


def _time(r: dict) -> float | None:
    for k, scale in TIME_KEYS.items():
        if r.get(k) is not None:
            return float(r[k]) * scale
    return None


def analyze(results: list[dict], peaks: Peaks) -> tuple[list[Row], list[str]]:
    """Per result: achieved rates, intensity, floor and its fraction."""
    rows, notes = [], []
    for r in results:
        name, t = _name(r), _time(r)
        flops = r.get("flops")
        nbytes = r.get("bytes", r.get("min_bytes"))
        if t is None or not t > 0:
            notes.append(f"{name}: skipped, no positive time ({', '.join(TIME_KEYS)})")
            continue
        if flops is None or nbytes is None or not nbytes > 0:
            notes.append(f"{name}: skipped, needs 'flops' and 'bytes' (the op's FLOPs and fewest bytes)")
            continue
        if not flops:
            notes.append(f"{name}: no FLOPs recorded: memory roof only, not plotted")
        flops, nbytes = float(flops), float(nbytes)
        t_compute = flops / (peaks.tflops * 1e12)
        t_memory = nbytes / (peaks.bandwidth_gbs * 1e9)
        floor = max(t_compute, t_memory)
        rows.append(Row(name, t, flops, nbytes, nbytes / t / 1e9, flops / t / 1e12, flops / nbytes, floor, floor / t,
                        "compute" if t_compute >= t_memory else "memory"))  # fmt: skip
    return rows, notes


def format_table(rows: list[Row], peaks: Peaks, meta: dict) -> str:
    """Markdown table, one row per kernel."""
    lines = [
        f"Roofline: {meta.get('device', 'device not named in the results')}"
        + (f", results of {meta['date']}" if meta.get("date") else ""),
        f"Peaks: {peaks.bandwidth_gbs:.1f} GB/s, {peaks.tflops:.3f} TFLOP/s (ridge {peaks.ridge:.1f} FLOP/B; "
        f"{peaks.source})",
        "",
        "| kernel | time (us) | GB/s | TFLOP/s | FLOP/B | bound | floor (us) | fraction of floor |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.time_s * 1e6:.1f} | {r.gbs:.1f} | {r.tflops:.4f} | {r.intensity:.2f} | {r.bound} | "
            f"{r.floor_s * 1e6:.1f} | {r.fraction_of_floor:.1%} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], peaks: Peaks, path: Path, title: str) -> Path:
    """Log-log roofline PNG: the two roofs and one labelled point per kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    rows = [r for r in rows if r.intensity > 0 and r.tflops > 0]  # a log plot has no place for zero FLOPs
    ais = [r.intensity for r in rows] or [peaks.ridge]
    lo = 10 ** math.floor(math.log10(min(min(ais), peaks.ridge) / 4))
    hi = 10 ** math.ceil(math.log10(max(max(ais), peaks.ridge) * 4))
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peaks.tflops, x * peaks.bandwidth_gbs / 1e3) for x in xs], "k-", lw=2, label="roof")
    ax.axvline(peaks.ridge, color="grey", ls=":", lw=1)
    for r in rows:
        ax.plot(r.intensity, r.tflops, "o")
        ax.annotate(f"{r.name} ({r.fraction_of_floor:.0%})", (r.intensity, r.tflops), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(
    paths: list[str],
    out: str = "profiling/results",
    bandwidth: float | None = None,
    tflops: float | None = None,
) -> dict[str, object]:
    """Read results, pick or measure the peaks, write roofline.md and roofline.png under ``out``."""
    results, meta, notes = load_results(paths)
    dp = meta.get("device_peaks") or {}
    bw = bandwidth or dp.get("bandwidth_gbs")
    rate = tflops or dp.get("tflops")
    given = "given on the command line" if (bandwidth or tflops) else "from the results file"
    if bw and rate:
        peaks = Peaks(float(bw), float(rate), given)
    else:  # measure what is missing here (say so: it may not be the machine of the results)
        m = measure_peaks()
        src = m.source if not (bw or rate) else f"{given} and {m.source} (for the rest)"
        peaks = Peaks(float(bw or m.bandwidth_gbs), float(rate or m.tflops), src)
    rows, more = analyze(results, peaks)
    notes += more
    table = format_table(rows, peaks, meta)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "roofline.md").write_text(table + "\n" + "".join(f"\n- {n}" for n in notes) + "\n")
    png = plot(rows, peaks, outdir / "roofline.png", f"lmini-kernels roofline: {meta.get('device', '')}")
    return {"peaks": asdict(peaks), "rows": [asdict(r) for r in rows], "notes": notes, "table": table,
            "png": str(png), "markdown": str(outdir / "roofline.md")}  # fmt: skip


def main_from_args(args: argparse.Namespace) -> int:
    """``lmini profile roofline`` (arguments parsed by :mod:`lmini_tools.profiling.cli`)."""
    doc = run(args.results, args.out, args.bandwidth, args.tflops)
    if args.json:
        print(json.dumps({k: v for k, v in doc.items() if k != "table"}, indent=2))
    else:
        print(doc["table"])
        for n in doc["notes"]:
            print(f"- {n}")
        print(f"wrote {doc['markdown']} and {doc['png']}")
    return 0


__all__ = ["Peaks", "Row", "analyze", "format_table", "load_results", "measure_peaks", "plot", "run"]
