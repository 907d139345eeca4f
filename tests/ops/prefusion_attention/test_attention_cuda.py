"""prefusion_attention on the CUDA backend: the kernel body run by the host SIMT layer on CPU
tensors (LMINI_CUDA_EMULATE=1, one OS thread per CUDA thread: tiny shapes), the nvcc resource
report for sm_80 and sm_90, and a real-GPU twin."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from prefusion_cases import check_against_reference, make_inputs
from utils import assert_close, randn

import lmini_kernels
from lmini_kernels import NotSupportedError

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_emulated_head_dims(dtype: torch.dtype, d: int) -> None:
    q, k, v, mask = make_inputs(1, 5, 37, 2, 1, d, dtype)
    check_against_reference("cuda", q, k, v, mask)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (6, 6), (3, 70)])
def test_emulated_odd_lengths(lq: int, lk: int, causal: bool) -> None:
    q, k, v, mask = make_inputs(2, lq, lk, 2, 2, 64, pad=lk > 1)
    check_against_reference("cuda", q, k, v, mask, causal=causal)


def test_emulated_non_contiguous_gqa() -> None:
    q, k, v, mask = make_inputs(1, 7, 33, 4, 2, 64)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    check_against_reference("cuda", qt, kt, vt, mask, softmax_scale=0.3)


def test_emulated_refuses_other_head_dims() -> None:
    q, k, v, _ = make_inputs(1, 2, 4, 2, 2, 48, pad=False)
    with pytest.raises(NotSupportedError, match="head dim 48"):
        lmini_kernels.prefusion_attention(q, k, v, backend="cuda")


def test_emulated_backward_matches_reference() -> None:
    """The cuda backend's emulated route has the op's autograd formula (it used to return a
    tensor detached from the graph): gradients equal the reference backend's."""
    q, k, v, mask = make_inputs(2, 5, 23, 4, 2, 64)
    g = randn(*q.shape)
    grads = []
    for backend in ("cuda", "reference"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = lmini_kernels.prefusion_attention(*leaves, key_padding_mask=mask, backend=backend)
        assert out.requires_grad
        out.backward(g)
        grads.append([t.grad for t in leaves])
    for got, want in zip(grads[0], grads[1], strict=True):
        assert_close(got, want.double(), dtype=torch.float32)


def test_emulated_op_opcheck_and_fake_tensors() -> None:
    """lmini_emu::prefusion_attention has the schema, fake kernel and autograd formula of
    lmini::prefusion_attention: opcheck passes, and the public op traces with fake tensors
    (which used to reach the kernel's raw pointers and crash)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, mask = make_inputs(1, 3, 9, 2, 1, 64)
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.lmini_emu.prefusion_attention.default, (q, k, v, True, mask, 0.125))
    torch.library.opcheck(torch.ops.lmini_emu.prefusion_attention.default, (q, k, v, False, None, 0.125))
    with FakeTensorMode():
        fq, fk = torch.empty(2, 4, 8, 64), torch.empty(2, 30, 2, 64)
        out = lmini_kernels.prefusion_attention(fq, fk, fk, backend="cuda")
    assert out.shape == (2, 4, 8, 64)


@pytest.mark.parametrize("arch", [80, 90])
def test_nvcc_resources(arch: int) -> None:
    """The kernel compiles for the GPU with no spills and within shared memory (48 KiB static)."""
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    launcher = ROOT / "csrc" / "ops" / "prefusion_attention" / "launcher.cu"
    out = subprocess.run(
        [str(nvcc), "-std=c++20", "-O3", f"-arch=sm_{arch}", "-Xptxas", "-v", "-I", str(ROOT / "csrc" / "include"),
         "-I", str(ROOT / "csrc"), "-c", str(launcher), "-o", os.devnull],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = out.stderr
    kernels = re.findall(r"Used (\d+) registers.*?(\d+) bytes smem", report)
    assert len(kernels) == 12, report  # 3 dtypes x 4 head dims
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report
    assert all(int(smem) <= 48 * 1024 for _, smem in kernels)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_matches_reference(dtype: torch.dtype) -> None:
    q, k, v, mask = (t.cuda() if t is not None else None for t in make_inputs(2, 44, 620, 8, 2, 128, dtype))
    check_against_reference("cuda", q, k, v, mask)
    check_against_reference("triton", q, k, v, mask)
