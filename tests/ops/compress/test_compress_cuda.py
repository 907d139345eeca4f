"""compress on the cuda backend: the CUDA kernel bodies through the host SIMT layer here
(LMINI_CUDA_EMULATE=1, blocks one at a time: small shapes), on the GPU with LMINI_TEST_GPU=1."""

from __future__ import annotations

import pytest
import torch
from compress_helpers import check_core, check_eps_numbers, check_folded, core_case, make_params, run
from utils import assert_close, non_contiguous, randn

import lmini_kernels as lk
from lmini_kernels.ops.compress.folded import core_torch

GPU = torch.cuda.is_available() and not lk.env.cuda_emulate()
DEVICE = "cuda" if GPU else "cpu"


def _core_op(*args):
    """The C++ core: the CUDA op on a GPU, its emulated twin here."""
    from lmini_kernels.ops.compress import core

    return (core.core_cpp if GPU else core.core_emulated)(*args)


def _core(x, a, p, splits):
    return _core_op(x, a, p, 1e-5, splits)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize(("batch", "grid", "c", "heads", "dh"), [(3, 5, 1, 8, 9), (2, 5, 2, 1, 12), (2, 1, 1, 3, 4)])
def test_cuda_folded_matches_float64(batch, grid, c, heads, dh, dtype):
    check_folded("cuda", batch, grid, c, heads, dh, dtype, DEVICE)


@pytest.mark.parametrize(
    ("batch", "n", "dim", "k", "splits"),
    [(1, 49, 1024, 8, 2), (2, 13, 37, 9, 1), (1, 4, 1100, 3, 3), (2, 169, 16, 1, 4)],
)
def test_cuda_core_shapes_and_splits(batch, n, dim, k, splits):
    """D = 1024 (128 threads x 8 columns), D > 1024 (256 threads), K over two row tiles,
    tokens split across blocks and merged by the second kernel."""
    x = randn(batch, n, dim, dtype=torch.float64, device=DEVICE) * 2 + 0.3
    a = randn(k, dim, dtype=torch.float64, device=DEVICE) * (3 / dim**0.5)
    pp = randn(k, n, dtype=torch.float64, device=DEVICE)
    acc_ref, lse_ref = core_torch(x, a, pp, 1e-5)
    acc, lse = _core(non_contiguous(x.float(), dim=1), a.float(), pp.float(), splits)
    assert_close(acc, acc_ref, dtype=torch.float32)
    assert_close(lse, lse_ref, dtype=torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("normalize", (True, False))
@pytest.mark.parametrize("splits", (0, 1, 2, 3))
def test_cuda_core_pidx_lengths_normalize(dtype, normalize, splits):
    """pidx (random columns with repeats), lengths (0, 1, N and between: chunks past a length
    are empty and merged as such), normalize on and off; K = 9 over two row tiles, N and D odd;
    unseen tokens poisoned with NaN/inf change nothing."""
    n = 21
    case = core_case(4, n, 37, 9, cols=5, seen=[0, 1, n, 13])
    check_core(_core_op, case, dtype, normalize, splits, DEVICE)


@pytest.mark.parametrize(("cols", "seen", "dim"), [(None, [3, 0], 1100), (6, None, 40)])
def test_cuda_core_pidx_or_lengths_alone(cols, seen, dim):
    """One of the two alone; D = 1100 (256 threads, the tile of 4 tokens)."""
    check_core(_core_op, core_case(2, 19, dim, 3, cols=cols, seen=seen), torch.float32, True, 2, DEVICE)


def test_cuda_core_clamps_bad_indices():
    """The CUDA glue checks no values (that would synchronise): the kernel clamps pidx into
    [0, T) and lengths into [0, N], so a bad entry never reads out of bounds."""
    x, a, pp, pidx, _ = core_case(2, 10, 16, 3, cols=4)
    bad = pidx.clone()
    bad[0, 2], bad[1, 5] = -7, 1000
    fixed = bad.clamp(0, 3)
    lengths, clamped = torch.tensor([-3, 50], dtype=torch.int32), torch.tensor([0, 10], dtype=torch.int32)
    args = [t.float().to(DEVICE) for t in (x, a, pp)]
    got = _core_op(*args, 1e-5, 1, bad.to(DEVICE), lengths.to(DEVICE), True)
    want = _core_op(*args, 1e-5, 1, fixed.to(DEVICE), clamped.to(DEVICE), True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_cuda_refuses_wide_dims():
    from lmini_kernels.ops.compress.api import CUDA_MAX_DIM

    dim = CUDA_MAX_DIM + 4
    p = {k: v.to(DEVICE) for k, v in make_params(dim, 2, 1, 1).items()}
    with pytest.raises(lk.NotSupportedError, match="embed_dim"):
        run(randn(1, 1, dim, device=DEVICE), p, 2, "cuda")


def test_cuda_backward_matches_reference():
    """The cuda backend (emulated here, the GPU op with LMINI_TEST_GPU=1) carries the shared
    analytic backward: gradients for x, query, both LayerNorms and all projections match the
    float64 reference's."""
    heads, dh, c, grid = 2, 8, 2, 5
    p = make_params(heads * dh, heads, c, grid)
    x = randn(2, grid * grid, heads * dh)
    g = randn(2, c * c, heads * dh)
    names = [n for n in p if n not in ("pos_q", "pos_k")]

    def grads(backend, dtype, device):
        q = {n: v.to(device, dtype).requires_grad_(n in names) for n, v in p.items()}
        xx = x.to(device, dtype).requires_grad_()
        out, _ = run(xx, q, heads, backend)
        (out * g.to(device, dtype)).sum().backward()
        return [xx.grad] + [q[n].grad for n in names]

    ref = grads("reference", torch.float64, "cpu")
    got = grads("cuda", torch.float32, DEVICE)
    for name, gr, gc in zip(["x"] + names, ref, got, strict=True):
        assert gc is not None, name
        assert_close(gc.cpu(), gr, dtype=torch.float32, factor=10.0)


def test_emulated_op_opcheck_and_fake_tensors():
    """lmini_emu::compress_folded (the CUDA kernel and glue on CPU tensors) has the schema, fake
    kernel and autograd formula of lmini::compress_folded: opcheck passes, and fake tensors
    trace through it (they used to reach the kernel's raw pointers)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = (randn(2, 9, 12).requires_grad_(), randn(5, 12).requires_grad_(), randn(5, 9).requires_grad_(), 1e-5, 0)
    torch.library.opcheck(torch.ops.lmini_emu.compress_folded.default, args)
    with FakeTensorMode():
        acc, lse = torch.ops.lmini_emu.compress_folded(torch.empty(3, 70, 16), torch.empty(4, 16), torch.empty(4, 70),
                                                       1e-5, 0)  # fmt: skip
    assert acc.shape == (3, 4, 16) and lse.shape == (3, 4)
    x, a, pp, pidx, lengths = core_case(3, 20, 12, 5, cols=7, seen=[20, 0, 6])
    for normalize in (True, False):
        args = (x.float().requires_grad_(), a.float().requires_grad_(), pp.float(), 1e-5, 2, pidx, lengths, normalize)
        torch.library.opcheck(torch.ops.lmini_emu.compress_folded.default, args)


@pytest.mark.gpu
def test_cuda_backward_and_opcheck_on_gpu():
    """On a GPU the C++ op carries the shared analytic backward (CPU twin: test_cpu_backward_matches_reference)."""
    x = randn(2, 9, 12, device="cuda")
    torch.library.opcheck(torch.ops.lmini.compress_folded.default, (x, randn(5, 12, device="cuda"),
                                                                    randn(5, 9, device="cuda"), 1e-5, 0))  # fmt: skip
    x, a, pp, pidx, lengths = (t.cuda() for t in core_case(3, 20, 12, 5, cols=7, seen=[20, 0, 6]))
    args = (x.float().requires_grad_(), a.float().requires_grad_(), pp.float(), 1e-5, 2, pidx, lengths, False)
    torch.library.opcheck(torch.ops.lmini.compress_folded.default, args)


def test_cuda_layernorm_eps_reaches_the_numbers():
    check_eps_numbers("cuda", device=DEVICE)
