"""lmini_tools.bench.auto_order: times every backend auto could pick, per op and shape, and
suggests the order (here on CPU, small shapes; the GPU session runs it at the GPU shapes)."""

from __future__ import annotations

import json

import pytest

from lmini_kernels.dispatch import registry
from lmini_tools.bench import auto_order


def test_suggested_order_by_geometric_mean_ratio():
    shapes = [{"ms": {"a": 2.0, "b": 1.0, "c": 4.0}}, {"ms": {"a": 1.0, "b": 1.5, "c": 2.0}}]
    # ratios to the fastest: a (2, 1) -> 1.41; b (1, 1.5) -> 1.22; c (4, 2) -> 2.83; d ran none
    assert auto_order.suggested_order(["d", "a", "b", "c"], shapes) == ["b", "a", "c", "d"]
    # a backend missing on one shape goes after every backend that ran them all
    assert auto_order.suggested_order(["a", "b"], [{"ms": {"a": 1.0}}, {"ms": {"a": 1.0, "b": 0.5}}]) == ["a", "b"]
    assert auto_order.suggested_order(["x", "y"], []) == ["x", "y"]  # no shape ran: registered order


def test_cpu_quick_run_measures_every_candidate(tmp_path, capsys):
    out = tmp_path / "auto.json"
    assert auto_order.main(["--device", "cpu", "--quick", "--min-run-time", "0.01", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and doc["environment"]["dtype"] == "float32"
    assert set(doc["ops"]) == {"compress", "prefusion_attention", "row_softmax"}
    for op, o in doc["ops"].items():
        registered = [b.name for b in registry(op).backends]
        assert o["registered_order"] == registered
        assert sorted(o["suggested_order"]) == sorted(registered)
        for s in o["shapes"]:
            # the CPU backends ran; the GPU ones are not candidates on CPU tensors, whatever the
            # verification routes (the suite turns on the interpreter and the emulator)
            assert set(s["ms"]) == {"cpu", "reference"}, s
            assert all(t > 0 for t in s["ms"].values())
            assert s["order"] == sorted(s["ms"], key=s["ms"].get)
            assert set(s["not_run"]) == {"cuda", "triton"}
        assert o["suggested_order"][-2:] in (["cuda", "triton"], ["triton", "cuda"]), o
    assert "auto_order:" in capsys.readouterr().out


def test_a_failing_backend_is_recorded_not_fatal(monkeypatch, tmp_path):
    real = auto_order.time_ms

    def flaky(fn, device, *, min_run_time):
        if flaky.calls == 0:
            flaky.calls += 1
            raise RuntimeError("boom")
        return real(fn, device, min_run_time=min_run_time)

    flaky.calls = 0
    monkeypatch.setattr(auto_order, "time_ms", flaky)
    ops = auto_order.measure("cpu", auto_order.torch.float32, True, 0.01)
    first = ops["compress"]["shapes"][0]
    assert first["not_run"]["cpu"] == "RuntimeError: boom" and set(first["ms"]) == {"reference"}
    assert set(ops["row_softmax"]["shapes"][0]["ms"]) == {"cpu", "reference"}


def test_interrupted_run_writes_the_ops_it_finished(monkeypatch, tmp_path):
    """SIGINT (a stage's time budget in benchmarks/gpu_session.sh) during the second op: the
    first op is written, marked incomplete, and the exit status is 130."""
    real = auto_order.time_ms
    calls = []

    def interrupt_on_second_op(fn, device, *, min_run_time):
        calls.append(1)
        if len(calls) > 2:  # compress (first op, one quick shape) has two candidates: cpu, reference
            raise KeyboardInterrupt
        return real(fn, device, min_run_time=min_run_time)

    monkeypatch.setattr(auto_order, "time_ms", interrupt_on_second_op)
    out = tmp_path / "auto.json"
    assert auto_order.main(["--device", "cpu", "--quick", "--min-run-time", "0.01", "--out", str(out)]) == 130
    doc = json.loads(out.read_text())
    assert doc["complete"] is False and list(doc["ops"]) == ["compress"]
    assert set(doc["ops"]["compress"]["shapes"][0]["ms"]) == {"cpu", "reference"}


def test_cuda_without_gpu_refuses(capsys):
    if auto_order.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert auto_order.main(["--device", "cuda", "--quick"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
