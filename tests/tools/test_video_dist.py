"""``lmini video-dist``: the scaling model, and a real 2-rank torchrun run checked against one process."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmini_tools.video_dist import scaling_table

ROOT = Path(__file__).resolve().parents[2]


def test_scaling_table_by_hand() -> None:
    kw = dict(frame_s=0.5, token_bytes_per_frame=100.0, text_sum_bytes=300.0, link_bytes_per_s=1000.0, latency_s=0.01)
    one, three = scaling_table(10, [1, 3], serial_s=2.0, **kw)
    assert one == dict(ranks=1, encode_s=5.0, comm_s=0.0, total_s=7.0, speedup=1.0, efficiency=1.0)
    # 3 ranks: shares of 4, 3, 3 frames; 2 log-steps per collective; 2 padded shares of 4 rows to rank 0
    comm = 3 * 0.01 * 2 + 2 * 4 * 100 / 1000 + 2 * 2 / 3 * 300 / 1000
    assert three["encode_s"] == 2.0 and math.isclose(three["comm_s"], comm)
    assert math.isclose(three["speedup"], 7.0 / (2.0 + comm + 2.0))
    assert math.isclose(three["efficiency"], three["speedup"] / 3)


def test_scaling_table_limits() -> None:
    free = dict(token_bytes_per_frame=0.0, text_sum_bytes=0.0, link_bytes_per_s=1.0, latency_s=0.0)
    for frames in (1, 7, 100):
        rows = scaling_table(frames, list(range(1, 9)), frame_s=1e-3, **free)
        for r in rows:  # no communication, nothing serial: the speedup of the largest share
            assert math.isclose(r["speedup"], frames / math.ceil(frames / r["ranks"]))
    # Amdahl: with a serial part the speedup stays under (encode + serial) / serial
    rows = scaling_table(10_000, [1, 2, 4, 8, 1024], frame_s=1e-3, serial_s=1.0, **free)
    assert all(r["speedup"] < 11.0 for r in rows) and rows[-1]["speedup"] > 10.0
    # a slow link: adding ranks stops paying
    rows = scaling_table(
        1000, [1, 2, 8], frame_s=1e-3, **{**free, "token_bytes_per_frame": 2e6, "link_bytes_per_s": 1e9}
    )
    assert rows[1]["speedup"] < 1.0 and rows[2]["total_s"] > rows[1]["total_s"]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(frames=0), "frames"),
        (dict(ranks=[]), "ranks"),
        (dict(ranks=[0]), "ranks"),
        (dict(frame_s=0.0), "frame_s"),
        (dict(latency_s=-1.0), "latency_s"),
    ],
)
def test_scaling_table_bad_input(kw: dict, match: str) -> None:
    args = dict(
        frames=10, ranks=[1, 2], frame_s=1.0, token_bytes_per_frame=1.0, text_sum_bytes=1.0,
        link_bytes_per_s=1.0, latency_s=0.0,
    )  # fmt: skip
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        scaling_table(**args)


def test_torchrun_two_ranks_check_ok() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the package as this test's interpreter finds it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "lmini_tools.video_dist", "--config", "tiny-c2", "--frames", "3", "--repeats", "1", "--timeout", "60"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "3 frames over 2 rank(s) (torchrun)" in out, out
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+$", proc.stdout, flags=re.M)
    assert rows == [("0", "2"), ("1", "1")], proc.stdout
    assert "check ok" in proc.stdout, out
