"""The benchmark harness (not a benchmark): timing, results files, suite registry, CLI."""

from __future__ import annotations

import csv
import json

import torch

from lmini_tools.bench import cli, harness


def test_measure_write_and_plot(tmp_path):
    ctx = harness.BenchContext("unit", "cpu", min_run_time=0.01, copy_gbps=10.0, gemm_tflops=0.5, verbose=False)
    x = torch.randn(256, 256)
    ctx.measure("case A", "slow", lambda: x @ x @ x, nbytes=x.numel() * 4, flops=4 * 256**3, baseline="slow")
    ctx.measure("case A", "fast", lambda: x + 1, nbytes=x.numel() * 4, baseline="slow")
    assert ctx.measure("case A", "broken", lambda: 1 / 0, nbytes=1) is None  # reported, not fatal
    slow, fast = ctx.rows
    assert slow.ms > 0 and fast.speedup == slow.ms / fast.ms
    assert abs(fast.frac_copy_bw - fast.gbps / 10.0) < 1e-12
    assert abs(slow.frac_gemm - slow.tflops / 0.5) < 1e-12 and fast.frac_gemm == 0.0  # the compute roof
    env = harness.environment("cpu")
    for key in ("device_name", "threads", "torch", "date", "python"):
        assert env[key]
    paths = harness.write_results(ctx, env, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["environment"]["copy_gbps"] == 10.0 and len(data["rows"]) == 2
    assert data["environment"]["gemm_tflops"] == 0.5
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["provider"] == "fast" and rows[1]["device_name"] == env["device_name"]
    assert paths["png"].stat().st_size > 1000
    assert "| case A | fast |" in harness.markdown_table(ctx)


def test_copy_bandwidth_is_positive():
    assert harness.copy_bandwidth_gbps("cpu", nbytes=8 * 2**20) > 0.1


def test_suite_registry_and_cli(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_suite(ctx):
        calls.append(ctx.device)
        ctx.measure("c", "p", lambda: None, nbytes=8)

    monkeypatch.setitem(cli.SUITES, "unit-fake", ("x:y", "a fake suite"))
    monkeypatch.setitem(cli.SHAPES, "unit-fake", [])
    monkeypatch.setattr(cli, "_load", lambda name: fake_suite)
    monkeypatch.setattr(harness, "copy_bandwidth_gbps", lambda device, nbytes=0: 1.0)
    assert cli.main(["unit-fake", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == ["cpu"]
    assert len(list(tmp_path.glob("unit-fake-cpu-*.json"))) == 1
    # a second run in the same second gets its own files, never overwrites the first
    assert cli.main(["unit-fake", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("unit-fake-cpu-*.json"))) == 2
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    assert "compress" in cli.SUITES


def test_quantiles_match_numpy_and_spread():
    import numpy as np

    samples = torch.rand(37).mul(10).tolist()
    q = harness.quantiles(samples)
    for key, pct in (("p20", 20), ("p50", 50), ("p80", 80)):
        assert abs(q[key] - np.percentile(samples, pct)) < 1e-9
    assert abs(q["spread"] - (q["p80"] - q["p20"]) / q["p50"]) < 1e-12
    assert q["min"] == min(samples)


def test_noisy_rows_are_flagged(monkeypatch):
    ctx = harness.BenchContext("unit", "cpu", verbose=False, repro_args=["--device", "cpu"])
    monkeypatch.setattr(harness, "time_samples", lambda fn, device, min_run_time: [1.0, 1.01, 0.99, 1.0, 1.0, 1.02])
    quiet = ctx.measure("c", "quiet", lambda: None, nbytes=8)
    monkeypatch.setattr(harness, "time_samples", lambda fn, device, min_run_time: [1.0, 2.0, 0.5, 3.0, 1.0, 1.5])
    noisy = ctx.measure("c", "noisy", lambda: None, nbytes=8)
    monkeypatch.setattr(harness, "time_samples", lambda fn, device, min_run_time: [1.0, 1.0])
    few = ctx.measure("c", "few", lambda: None, nbytes=8)
    assert not quiet.noisy and noisy.noisy and few.noisy
    assert quiet.samples == 6 and quiet.p20 <= quiet.ms <= quiet.p80


def test_repro_command_parses_back_to_the_same_run():
    import shlex

    args = cli.build_parser().parse_args(
        ["compress", "--device", "cpu", "--dtype", "float16", "--batch", "3", "--grid", "5", "--quick"]
    )
    ctx = harness.BenchContext("compress", "cpu", verbose=False, repro_args=cli.repro_args(args, "cpu"))
    monkey = harness.time_samples
    try:
        harness.time_samples = lambda fn, device, min_run_time: [1.0] * 6
        row = ctx.measure("c", "lmini cpu", lambda: None, nbytes=8)
    finally:
        harness.time_samples = monkey
    words = shlex.split(row.repro)
    assert words[:3] == ["lmini", "bench", "compress"]
    again = cli.build_parser().parse_args(words[2:])
    for name in ("device", "dtype", "batch", "grid", "quick"):
        assert getattr(again, name) == getattr(args, name), name
    assert again.providers == "lmini cpu"


def test_provider_filter_skips_the_others():
    ctx = harness.BenchContext("unit", "cpu", min_run_time=0.01, verbose=False, providers=frozenset({"b"}))
    assert ctx.measure("c", "a", lambda: None, nbytes=8) is None
    assert ctx.measure("c", "b", lambda: None, nbytes=8) is not None
    assert ctx.seen_providers == {"a", "b"} and [r.provider for r in ctx.rows] == ["b"]
