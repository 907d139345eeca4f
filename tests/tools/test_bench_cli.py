"""``lmini bench`` as a user meets it: one line and exit 2 for every mistake, before any
measurement; per-suite help; and the pytest-benchmark suite under benchmarks/ (smoke run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lmini(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmini_tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--threads", "0"), "--threads"),
        (("--dtype", "fp8"), "--dtype"),
        (("--min-run-time", "inf"), "--min-run-time"),
        (("--out", "/proc/lmini-not-here"), "--out /proc/lmini-not-here"),
        (("--batch", "-1"), "--batch"),
    ],
)
def test_user_errors_exit_2_in_one_line(args, words):
    out = lmini("bench", "compress", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert words in out.stderr.strip().splitlines()[-1]
    assert "copy bandwidth" not in out.stdout  # refused before measuring


def test_unknown_provider_names_the_valid_ones():
    out = lmini("bench", "compress", "--quick", "--no-write", "--min-run-time", "0.01", "--batch", "1", "--grid", "2",
                "--dim", "16", "--heads", "2", "--providers", "lmini cpu,nope")  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "unknown nope" in line and "official eager" in line


def test_per_suite_help():
    out = lmini("bench", "compress", "--help")
    assert out.returncode == 0 and "--queries-side" in out.stdout and "--providers" in out.stdout
    assert "--queries-side" not in lmini("bench", "prefusion", "--help").stdout


def test_pytest_benchmark_suite_smoke(tmp_path):
    """The pytest-benchmark route, on a tiny shape: every (case, provider) of the compress suite
    runs and lands in the JSON."""
    report = tmp_path / "bench.json"
    env = {**os.environ, "LMINI_BENCH_SHAPE": "batch=2,grid=3,dim=32,heads=2", "LMINI_BENCH_DEVICE": "cpu"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", f"--benchmark-json={report}",
           "--benchmark-min-rounds=2", "--benchmark-max-time=0.05", "-q", "-p", "no:cacheprovider"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    names = {b["name"] for b in json.loads(report.read_text())["benchmarks"]}
    assert any("official eager" in n for n in names) and any("lmini cpu" in n for n in names), names


def test_backward_mode_runs_every_provider():
    out = lmini("bench", "compress", "--mode", "fwd+bwd", "--batch", "2", "--grid", "3", "--dim", "16", "--heads", "2",
                "--no-write", "--min-run-time", "0.01")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| B=2")]
    assert {line.split("|")[2].strip() for line in table} >= {"official eager", "lmini reference", "lmini cpu"}
    assert "--mode fwd+bwd" in out.stdout  # in each row's repro command


def test_interrupted_run_writes_the_rows_measured_so_far(tmp_path, monkeypatch, capsys):
    """Ctrl-C, or the SIGINT of a stage's time budget (benchmarks/gpu_session.sh), mid-suite:
    the rows already measured are written, and the exit status is 130."""
    from lmini_tools.bench import cli

    def suite(ctx):
        ctx.measure("case 1", "sum", lambda: sum(range(100)), nbytes=800)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", lambda name: suite)
    rc = cli.main(["compress", "--device", "cpu", "--min-run-time", "0.01", "--out", str(tmp_path)])
    assert rc == 130
    assert "interrupted: writing the 1 rows measured so far" in capsys.readouterr().err
    (report,) = tmp_path.glob("compress-cpu-*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [(r["case"], r["provider"]) for r in rows] == [("case 1", "sum")] and rows[0]["ms"] > 0
