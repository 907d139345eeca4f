"""compress on the Triton backend (through the interpreter here; on the GPU with LMINI_TEST_GPU=1)."""

from __future__ import annotations

import pytest
import torch
from compress_helpers import check_eps_numbers, check_folded, make_params, oracle, run
from utils import assert_close, non_contiguous, randn

import lmini_kernels as lk
from lmini_kernels.ops.compress.folded import core_torch

DEVICE = "cuda" if torch.cuda.is_available() and not lk.env.triton_interpret() else "cpu"


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize(("batch", "grid", "c", "heads", "dh"), [(3, 5, 1, 8, 9), (2, 13, 2, 1, 12), (2, 1, 1, 3, 4)])
def test_triton_folded_matches_float64(batch, grid, c, heads, dh, dtype):
    check_folded("triton", batch, grid, c, heads, dh, dtype, DEVICE)


def test_triton_real_shape():
    p = {k: v.to(DEVICE) for k, v in make_params(1024, 8, 1, 24).items()}
    x = randn(2, 576, 1024, device=DEVICE) * 3 + 1
    assert_close(run(x, p, 8, "triton")[0], oracle(x, p, 8)[0])


@pytest.mark.parametrize("splits", (2, 3))
def test_triton_core_splits(splits):
    from lmini_kernels.ops.compress.triton_op import core_triton

    x = randn(2, 37, 24, dtype=torch.float64, device=DEVICE)
    a, pp = randn(11, 24, dtype=torch.float64, device=DEVICE) * 0.5, randn(11, 37, dtype=torch.float64, device=DEVICE)
    acc_ref, lse_ref = core_torch(x, a, pp, 1e-5)
    acc, lse = core_triton(x.float(), a.float(), pp.float(), 1e-5, splits)
    assert_close(acc, acc_ref, dtype=torch.float32)
    assert_close(lse, lse_ref, dtype=torch.float32)


def test_triton_backward_matches_reference():
    heads, dh, c, grid = 2, 8, 2, 5
    p = make_params(heads * dh, heads, c, grid)
    x = randn(2, grid * grid, heads * dh)
    g = randn(2, c * c, heads * dh)
    names = [n for n in p if n not in ("pos_q", "pos_k")]

    def grads(backend, dtype):
        q = {n: v.to(dtype=dtype, device=DEVICE).requires_grad_(n in names) for n, v in p.items()}
        xx = x.to(dtype=dtype, device=DEVICE).requires_grad_()
        out, _ = run(xx, q, heads, backend)
        (out * g.to(dtype=dtype, device=DEVICE)).sum().backward()
        return [xx.grad] + [q[n].grad for n in names]

    for name, gr, gt in zip(
        ["x"] + names, grads("reference", torch.float64), grads("triton", torch.float32), strict=True
    ):
        assert_close(gt, gr, dtype=torch.float32, factor=10.0), name


def test_triton_opcheck():
    from lmini_kernels.ops.compress.triton_op import core_triton

    x = randn(2, 9, 12, device=DEVICE)
    torch.library.opcheck(core_triton, (x, randn(5, 12, device=DEVICE) * 0.5, randn(5, 9, device=DEVICE), 1e-5, 0))


def test_triton_refuses_bf16_in_interpreter_and_wide_dims():
    from lmini_kernels.ops.compress.api import TRITON_MAX_DIM

    if DEVICE == "cpu":
        p = make_params(16, 2, 1, 3, torch.bfloat16)
        with pytest.raises(lk.NotSupportedError, match="bfloat16"):
            run(randn(1, 9, 16, dtype=torch.bfloat16), p, 2, "triton")
    dim = TRITON_MAX_DIM + 8
    p = {k: v.to(DEVICE) for k, v in make_params(dim, 2, 1, 1).items()}
    with pytest.raises(lk.NotSupportedError, match="embed_dim"):
        run(randn(1, 1, dim, device=DEVICE), p, 2, "triton")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize(
    ("batch", "n", "dim", "k", "splits", "with_lse"),
    [(2, 25, 72, 8, 0, False), (3, 37, 27, 11, 3, True), (2, 1, 9, 1, 0, True), (2, 13, 40, 16, 2, False)],
)
def test_triton_core_backward_kernel_matches_float64(batch, n, dim, k, splits, with_lse, dtype):
    """The Triton backward kernel of the core against the analytic float64 backward (odd N, D, K; splits)."""
    from lmini_kernels.ops.compress.folded import core_backward
    from lmini_kernels.ops.compress.triton_op import core_triton_bwd

    x = non_contiguous(randn(batch, n, dim, dtype=torch.float64, device=DEVICE, scale=2.0) + 0.3, dim=0)
    a = randn(k, dim, dtype=torch.float64, device=DEVICE) * 0.4
    pp = randn(k, n, dtype=torch.float64, device=DEVICE)
    acc, lse = core_torch(x, a, pp, 1e-5)
    g = randn(batch, k, dim, dtype=torch.float64, device=DEVICE)
    gl = randn(batch, k, dtype=torch.float64, device=DEVICE) if with_lse else torch.zeros_like(lse)
    ref = core_backward(x, a, pp, 1e-5, acc, lse, g, gl if with_lse else None)
    xq = x.to(dtype)
    got = core_triton_bwd(xq, a.float(), pp.float(), 1e-5, acc.float(), lse.float(), g.float(), gl.float(), splits)
    assert got[0].dtype == dtype and got[0].shape == x.shape
    for name, gt, gr in zip(("dx", "da", "dp"), got, ref, strict=True):
        assert_close(gt, gr, dtype=dtype, factor=10.0), name


def test_triton_backward_uses_the_kernel_and_refuses_wide_k(monkeypatch):
    """The Triton core's autograd runs the Triton backward op (K <= 16); the op refuses K = 17."""
    import lmini_kernels.ops.compress.triton as tri
    import lmini_kernels.ops.compress.triton_op as op

    calls = []
    real = op.core_triton_bwd
    monkeypatch.setattr(op, "core_triton_bwd", lambda *args: calls.append(1) or real(*args))
    x = randn(2, 9, 12, device=DEVICE).requires_grad_()
    a = (randn(5, 12, device=DEVICE) * 0.5).requires_grad_()
    pp = randn(5, 9, device=DEVICE).requires_grad_()
    acc, lse = op.core_triton(x, a, pp, 1e-5, 0)
    got = torch.autograd.grad((acc * 1.5).sum() + lse.sum(), (x, a, pp))
    assert calls == [1]
    x64, a64, p64 = (t.detach().double().requires_grad_() for t in (x, a, pp))
    acc64, lse64 = core_torch(x64, a64, p64, 1e-5)
    ref = torch.autograd.grad((acc64 * 1.5).sum() + lse64.sum(), (x64, a64, p64))
    for gt, gr in zip(got, ref, strict=True):
        assert_close(gt, gr, dtype=torch.float32, factor=10.0)
    k = tri.KT_BWD_MAX + 1
    args = (randn(2, k, 12, device=DEVICE), randn(2, k, device=DEVICE))
    with pytest.raises(ValueError, match="at most 16 folded rows and"):
        real(x.detach(), randn(k, 12, device=DEVICE), randn(k, 9, device=DEVICE), 1e-5, *args, *args)


def test_triton_layernorm_eps_reaches_the_numbers():
    check_eps_numbers("triton", device=DEVICE)
