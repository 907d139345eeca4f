"""NVTX ranges (on only with LMINI_NVTX=1, zero cost when off) and the Nsight scripts' clean
failure on a machine without a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmini_kernels
from lmini_kernels import nvtx

ROOT = Path(__file__).resolve().parents[2]
NSIGHT = ROOT / "profiling" / "nsight"


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LMINI_NVTX", None)
    env.update(kw)
    return env


def test_off_means_no_wrapper():
    assert not nvtx.ENABLED  # the suite runs without LMINI_NVTX
    for fn in (lmini_kernels.compress, lmini_kernels.prefusion_attention, lmini_kernels.row_softmax):
        assert not hasattr(fn, "__lmini_nvtx__"), fn  # the function itself, not a wrapper

    def f(x):
        return x

    assert nvtx.annotate("x")(f) is f
    assert nvtx.range("a") is nvtx.range("b")  # one shared no-op context
    assert nvtx.annotate_modules([("x", torch.nn.Linear(2, 2))]) == []


def test_ranges_when_on(monkeypatch):
    """With LMINI_NVTX=1 every public op call and every model stage pushes and pops one range."""
    code = r"""
import json, torch
import lmini_kernels.nvtx as n
calls = []
n._push = lambda s: calls.append(s)
n._pop = lambda: calls.append("pop")
import lmini_kernels
from llava_mini import LlavaMini, LlavaMiniConfig
lmini_kernels.row_softmax(torch.randn(3, 5), backend="reference")
q = torch.randn(1, 2, 2, 8); k = torch.randn(1, 4, 2, 8)
lmini_kernels.prefusion_attention(q, k, k, backend="reference")
m = LlavaMini(LlavaMiniConfig.from_name("tiny"), backend="reference").eval()
n.annotate_modules((s.label, s.module) for s in m.stages())
ids = torch.ones(1, 5, dtype=torch.long); ids[0, 0] = -200
with torch.no_grad(), n.range("lmini.pipeline.test"):
    m.encode_multimodal(ids, torch.randn(1, 3, 28, 28))
print(json.dumps(calls))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_env(LMINI_NVTX="1"), capture_output=True, text=True,
                         cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    calls = json.loads(out.stdout.strip().splitlines()[-1])
    assert calls[:4] == ["lmini::row_softmax", "pop", "lmini::prefusion_attention", "pop"]
    names = [c for c in calls if c != "pop"]
    assert names.count("pop") == 0 and calls.count("pop") == len(names)  # balanced
    for stage in ("lmini.pipeline.test", "lmini.stage.vit", "lmini.stage.compression", "lmini.stage.projector",
                  "lmini.stage.prefusion.0", "lmini.stage.prefusion.1", "lmini::compress"):  # fmt: skip
        assert stage in names, (stage, names)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: the GPU route runs")
@pytest.mark.parametrize("script", ["nsys_pipeline.sh", "ncu_kernels.sh"])
def test_nsight_scripts_fail_in_one_line_without_gpu(script):
    out = subprocess.run(["bash", str(NSIGHT / script)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "no NVIDIA GPU" in lines[0] and script in lines[0], lines


@pytest.mark.parametrize("script", ["nsys_pipeline.sh", "ncu_kernels.sh", "common.sh"])
def test_nsight_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(NSIGHT / script)]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the drivers run for real")
@pytest.mark.parametrize("driver", [["run_pipeline.py"], ["run_kernels.py", "--op", "row_softmax"]])
def test_drivers_fail_in_one_line_without_gpu(driver):
    out = subprocess.run([sys.executable, str(NSIGHT / driver[0]), *driver[1:]], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 2
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], lines
