"""The benchmark harness (not a benchmark): timing, results files, suite registry, CLI."""

from __future__ import annotations

import csv
import json

import torch

from lmini_tools.bench import cli, harness


def test_measure_write_and_plot(tmp_path):
    ctx = harness.BenchContext("unit", "cpu", min_run_time=0.01, copy_gbps=10.0, verbose=False)
    x = torch.randn(256, 256)
    ctx.measure("case A", "slow", lambda: x @ x @ x, nbytes=x.numel() * 4, flops=4 * 256**3, baseline="slow")
    ctx.measure("case A", "fast", lambda: x + 1, nbytes=x.numel() * 4, baseline="slow")
    assert ctx.measure("case A", "broken", lambda: 1 / 0, nbytes=1) is None  # reported, not fatal
    slow, fast = ctx.rows
    assert slow.ms > 0 and fast.speedup == slow.ms / fast.ms
    assert abs(fast.frac_copy_bw - fast.gbps / 10.0) < 1e-12
    env = harness.environment("cpu")
    for key in ("device_name", "threads", "torch", "date", "python"):
        assert env[key]
    paths = harness.write_results(ctx, env, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["environment"]["copy_gbps"] == 10.0 and len(data["rows"]) == 2
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

    monkeypatch.setitem(cli.SUITES, "unit-fake", "x:y")
    monkeypatch.setattr(cli, "_load", lambda name: fake_suite)
    monkeypatch.setattr(harness, "copy_bandwidth_gbps", lambda device, nbytes=0: 1.0)
    assert cli.main(["unit-fake", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == ["cpu"]
    assert len(list(tmp_path.glob("unit-fake-cpu-*.json"))) == 1
    assert "compress" in cli.SUITES
