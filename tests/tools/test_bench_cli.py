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


def test_ctrl_c_keeps_the_finished_rows(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt in the middle of a suite: the rows measured before it are written
    (marked interrupted in the environment), one line on stderr says so, exit status 130."""
    from lmini_tools.bench import cli

    def suite(ctx):
        ctx.measure("case A", "first", lambda: sum(range(100)), nbytes=800, min_run_time=0.01)
        ctx.measure("case A", "second", lambda: sum(range(200)), nbytes=1600, min_run_time=0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", lambda name: suite)
    code = cli.main(["compress", "--device", "cpu", "--out", str(tmp_path), "--min-run-time", "0.01"])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted; keeping the 2 rows finished" in err
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert [r["provider"] for r in data["rows"]] == ["first", "second"]
    assert data["environment"]["interrupted"] is True
    assert len(list(tmp_path.glob("*.csv"))) == 1
