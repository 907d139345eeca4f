"""Backend registry, availability, refusals, build info and the `lmini info` command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from utils import randn

import lmini_kernels as lk
from lmini_kernels.dispatch import Backend, OpRegistry


def test_available_backends_per_op():
    assert lk.available_backends("row_softmax") == ["cuda", "triton", "cpu", "reference"]  # both CPU routes on
    for op in ("compress", "prefusion_attention"):
        assert "reference" in lk.available_backends(op)
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        lk.available_backends("nope")


def test_build_info_records_what_was_compiled():
    info = lk.build_info()
    assert info["extension_loaded"], info["extension_error"]
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "cpu" in info["backends_compiled"]
    if "cuda" in info["backends_compiled"]:
        assert info["cuda_archs"] and info["nvcc"]
    else:
        assert info["cuda_skipped_because"]
    assert info["emulator_loaded"], info["emulator_error"]


def test_explicit_backend_lists_every_reason():
    reg = OpRegistry("toy")
    reg.register(
        Backend(
            "cpu",
            lambda x: x,
            devices=frozenset({"cpu"}),
            dtypes=frozenset({torch.float32}),
            check=lambda **p: ["n must be <= 4"] if p["n"] > 4 else [],
        )
    )
    reg.register(Backend("reference", lambda x: x, devices=frozenset({"cpu", "meta"})))
    x = randn(2, dtype=torch.float16)
    with pytest.raises(lk.NotSupportedError, match="x has dtype float16, this backend supports float32"):
        reg.select("cpu", {"x": x}, n=1)
    with pytest.raises(lk.NotSupportedError, match="n must be <= 4"):
        reg.select("cpu", {"x": randn(2)}, n=5)
    assert reg.select("auto", {"x": randn(2)}, n=5).name == "reference"
    meta = torch.empty(2, device="meta")
    with pytest.raises(lk.NotSupportedError, match="x is on meta, this backend runs on cpu"):
        reg.select("cpu", {"x": meta}, n=1)


def test_unavailable_backend_says_how_to_fix(monkeypatch):
    from lmini_kernels import _ext

    monkeypatch.setattr(_ext, "C_ERROR", "the C++ extension lmini_kernels._C could not be imported (x); build it")
    with pytest.raises(lk.NotSupportedError, match="could not be imported.*build it"):
        lk.row_softmax(randn(2, 3), backend="cpu")


def test_lmini_info_prints_backends():
    out = subprocess.run(
        [sys.executable, "-m", "lmini_tools.cli", "info", "-v"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "lmini-kernels" in text and "torch" in text
    for op in ("compress", "prefusion_attention", "row_softmax"):
        assert op in text
    assert "cpu*" in text and "reference*" in text
    assert text.strip().splitlines()[-1].startswith("GPU:")
    assert "Traceback" not in out.stderr


def test_cuda_refusal_when_built_without_cuda(monkeypatch):
    from lmini_kernels import _ext

    monkeypatch.setenv("LMINI_CUDA_EMULATE", "0")
    monkeypatch.setattr(_ext, "compiled_cuda", lambda: False)
    monkeypatch.setattr(
        _ext, "build_info", lambda: {"backends_compiled": ["cpu"], "cuda_skipped_because": "no CUDA toolkit found"}
    )
    with pytest.raises(lk.NotSupportedError, match="built without CUDA kernels \\(no CUDA toolkit found\\)"):
        lk.row_softmax(randn(2, 3), backend="cuda")
    assert "cuda" not in lk.available_backends("row_softmax")


def test_triton_refusal_without_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(lk.NotSupportedError, match="no CUDA GPU here; set TRITON_INTERPRET=1"):
        lk.row_softmax(randn(2, 3), backend="triton")
