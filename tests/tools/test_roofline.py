"""The roofline suite on results files (the minimal schema and its aliases), with given peaks
(exact arithmetic) and measured ones (CPU)."""

from __future__ import annotations

import json

import pytest

from lmini_tools.profiling import roofline
from lmini_tools.profiling.cli import main as profile_main

RESULTS = {
    "device": "cpu: test",
    "date": "2026-11-25",
    "results": [
        # 1 GFLOP, 10 MB in 1 ms: 10 GB/s, 1 TFLOP/s, 100 FLOP/B
        {"op": "compress", "backend": "cpu", "label": "a", "median_s": 1e-3, "flops": 1e9, "bytes": 1e7},
        # memory-bound: 1 MFLOP, 100 MB in 20 ms (time in ms, bytes as min_bytes)
        {"name": "softmax", "median_ms": 20.0, "flops": 1e6, "min_bytes": 1e8},
        {"name": "no-bytes", "median_us": 5.0, "flops": 1e6},
    ],
}


def _write(tmp_path, doc) -> str:
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(doc))
    return str(p)


def test_arithmetic_with_given_peaks(tmp_path):
    doc = roofline.run([_write(tmp_path, RESULTS)], str(tmp_path / "out"), bandwidth=100.0, tflops=10.0)
    rows = {r["name"]: r for r in doc["rows"]}
    a = rows["compress/cpu/a"]
    assert a["gbs"] == pytest.approx(10.0) and a["tflops"] == pytest.approx(1.0)
    assert a["intensity"] == pytest.approx(100.0)
    # floor: max(1e9 / 1e13, 1e7 / 1e11) = 1e-4 s -> 10% of the floor; ridge is 100 FLOP/B
    assert a["floor_s"] == pytest.approx(1e-4) and a["fraction_of_floor"] == pytest.approx(0.1)
    s = rows["softmax"]
    assert s["bound"] == "memory" and s["time_s"] == pytest.approx(0.02)
    assert s["fraction_of_floor"] == pytest.approx((1e8 / 1e11) / 0.02)
    assert "no-bytes" not in rows and any("no-bytes" in n and "bytes" in n for n in doc["notes"])
    png = (tmp_path / "out" / "roofline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (tmp_path / "out" / "roofline.md").read_text()
    assert "| compress/cpu/a |" in md and "10.0%" in md and "cpu: test" in md


def test_peaks_from_file_and_measured(tmp_path):
    doc = dict(RESULTS, device_peaks={"bandwidth_gbs": 50.0, "tflops": 2.0})
    out = roofline.run([_write(tmp_path, doc)], str(tmp_path / "o"))
    assert out["peaks"]["bandwidth_gbs"] == 50.0 and out["peaks"]["source"] == "from the results file"
    m = roofline.measure_peaks("cpu", copy_mb=16, matmul_n=256, min_run_time=0.05)
    assert m.bandwidth_gbs > 0.1 and m.tflops > 1e-4 and "cpu" in m.source


def test_cli_and_bad_input(tmp_path, capsys):
    path = _write(tmp_path, RESULTS["results"])  # a bare list is accepted
    args = ["roofline", path, "--out", str(tmp_path / "c"), "--bandwidth", "100", "--tflops", "10", "--json"]
    assert profile_main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "x"}))
    with pytest.raises(ValueError, match="results"):
        roofline.run([str(bad)], str(tmp_path / "d"), 1.0, 1.0)
    with pytest.raises(SystemExit):
        profile_main(["roofline", path, "--bandwidth", "-1"])
    broken = tmp_path / "broken.json"
    for text in ('{"rows": [', "\xff\xfe"):
        broken.write_bytes(text.encode("latin-1"))
        with pytest.raises(ValueError, match=r"broken\.json: not a JSON results file"):
            roofline.run([str(broken)], str(tmp_path / "e"), 1.0, 1.0)


def test_reads_the_bench_harness_json(tmp_path):
    """The `lmini bench` layout: environment + rows with ms; its same-run copy bandwidth is the roof."""
    doc = {
        "suite": "compress",
        "environment": {
            "device": "cpu",
            "device_name": "Test CPU",
            "threads": 2,
            "date": "2026-11-25T11:17:22Z",
            "copy_gbps": 20.0,
        },  # fmt: skip
        "rows": [
            {"suite": "compress", "case": "image B=1", "provider": "lmini cpu", "ms": 2.0, "bytes": 4e7, "flops": 2e9},
            {"suite": "compress", "case": "copy", "provider": "x", "ms": 1.0, "bytes": 1e7, "flops": 0},
        ],
    }
    out = roofline.run([_write(tmp_path, doc)], str(tmp_path / "b"), tflops=1.0)
    assert out["peaks"]["bandwidth_gbs"] == 20.0 and out["peaks"]["tflops"] == 1.0
    rows = {r["name"]: r for r in out["rows"]}
    r = rows["compress/image B=1/lmini cpu"]
    assert r["gbs"] == pytest.approx(20.0) and r["fraction_of_floor"] == pytest.approx(1.0)  # at the memory roof
    assert rows["compress/copy/x"]["bound"] == "memory" and any("no FLOPs" in n for n in out["notes"])
    assert "Test CPU, 2 threads" in out["table"]
