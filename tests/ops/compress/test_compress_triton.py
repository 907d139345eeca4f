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


# The resampler family's core: per-token p columns (pidx), per-image lengths, normalize=False.


def _lengths(batch: int, n: int, full: bool) -> torch.Tensor:
    """Per-image lengths covering 0, 1, N (when ``full``, else N - 2) and one random value, shuffled."""
    vals = [0, 1, n if full else n - 2] + torch.randint(2, n - 1, (batch - 3,)).tolist()
    return torch.tensor(vals, dtype=torch.int32)[torch.randperm(batch)]


def _indexed_case(batch, n, dim, k, t, dtype, use_pidx, use_lengths, normalize):
    """Inputs of the core on odd sizes, as (clean, dirty, lengths, pidx): clean = (x, a, p) in
    float64 holding exactly the kernel's values (x rounded to ``dtype``, a and p to float32);
    dirty = the kernel's (x, a, p) with NaN/inf in every unseen token and NaN in every column
    of p no seen token uses. pidx (seen tokens: random columns in [0, T - 1), with repeats;
    unseen: column T - 1) and lengths are int32 or None."""
    x = (randn(batch, n, dim, dtype=torch.float64, scale=2.0) + 0.3).to(dtype)
    a = (randn(k, dim, dtype=torch.float64) * (0.4 if normalize else 0.15)).float()
    lengths = _lengths(batch, n, full=use_pidx) if use_lengths else None
    seen = torch.ones(batch, n, dtype=torch.bool) if lengths is None else torch.arange(n) < lengths.view(-1, 1).long()
    pidx = None
    if use_pidx:
        pidx = torch.where(seen, torch.randint(0, t - 1, (batch, n)), t - 1).to(torch.int32)
    else:
        t = n
    p = randn(k, t).float()
    used = torch.zeros(t, dtype=torch.bool)
    used[(pidx.long() if use_pidx else torch.arange(n).expand(batch, n))[seen]] = True
    bad = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    x_dirty = torch.where(seen.unsqueeze(-1), x, bad[torch.arange(batch * n * dim) % 3].view(batch, n, dim))
    p_dirty = torch.where(used, p, float("nan"))
    clean = tuple(v.double() for v in (x, a, p))
    return clean, (x_dirty.to(DEVICE), a.to(DEVICE), p_dirty.to(DEVICE)), lengths, pidx


def _on(t):
    return None if t is None else t.to(DEVICE)


def _assert_close_lse(got: torch.Tensor, ref: torch.Tensor) -> None:
    """lse against the float64 one: -inf exactly where the reference has it (no seen token)."""
    empty = ref == -torch.inf
    assert torch.equal(got == -torch.inf, empty.to(got.device)), "lse: -inf exactly for images with no seen token"
    assert_close(got[~empty], ref[~empty], dtype=torch.float32)


INDEXED_CASES = [(dt, norm, splits, True, True) for dt in (torch.float32, torch.float16)
                 for norm in (True, False) for splits in (1, 4, 0)]  # fmt: skip
INDEXED_CASES += [(torch.float32, True, 0, True, False), (torch.float16, False, 3, True, False)]
INDEXED_CASES += [(torch.float32, False, 0, False, True), (torch.float16, True, 5, False, True)]


@pytest.mark.parametrize(("dtype", "normalize", "splits", "use_pidx", "use_lengths"), INDEXED_CASES)
def test_triton_core_indexed_matches_float64(dtype, normalize, splits, use_pidx, use_lengths):
    """The forward kernel with pidx / lengths / normalize=False against core_torch in float64
    (odd N, D, K over two K tiles, T < N); NaN/inf in unseen tokens and unused p columns
    change no bit of the outputs."""
    from lmini_kernels.ops.compress.triton_op import core_triton

    (x, a, p), dirty, lengths, pidx = _indexed_case(5, 23, 27, 11, 7, dtype, use_pidx, use_lengths, normalize)
    acc_ref, lse_ref = core_torch(x, a, p, 1e-5, pidx, lengths, normalize)
    args = (1e-5, splits, _on(pidx), _on(lengths), normalize)
    acc, lse = core_triton(*dirty, *args)
    assert acc.dtype == lse.dtype == torch.float32
    assert_close(acc, acc_ref, dtype=torch.float32)
    _assert_close_lse(lse, lse_ref)
    acc_c, lse_c = core_triton(x.to(dtype).to(DEVICE), a.float().to(DEVICE), p.float().to(DEVICE), *args)
    assert torch.equal(acc, acc_c) and torch.equal(lse, lse_c), "unseen tokens changed the outputs"


@pytest.mark.parametrize(("dtype", "normalize", "splits", "use_pidx", "use_lengths"), INDEXED_CASES)
def test_triton_core_backward_indexed_matches_float64(dtype, normalize, splits, use_pidx, use_lengths):
    """The backward kernel with pidx (dp scattered into p's T columns) / lengths / normalize=False
    against core_backward in float64; unseen tokens get dx = 0 and change no bit of dx, da, dp."""
    from lmini_kernels.ops.compress.folded import core_backward
    from lmini_kernels.ops.compress.triton_op import core_triton_bwd

    (x, a, p), dirty, lengths, pidx = _indexed_case(5, 19, 21, 13, 6, dtype, use_pidx, use_lengths, normalize)
    acc, lse = core_torch(x, a, p, 1e-5, pidx, lengths, normalize)
    g = randn(*acc.shape, dtype=torch.float64)
    gl = randn(*lse.shape, dtype=torch.float64)
    ref = core_backward(x, a, p, 1e-5, acc, lse, g, gl, pidx, lengths, normalize)
    saved = tuple(v.float().to(DEVICE) for v in (acc, lse, g, gl))
    args = (1e-5, *saved, splits, _on(pidx), _on(lengths), normalize)
    got = core_triton_bwd(dirty[0], dirty[1], dirty[2], *args)
    assert got[0].dtype == dtype and got[2].shape == p.shape
    for name, gt, gr in zip(("dx", "da", "dp"), got, ref, strict=True):
        assert_close(gt, gr, dtype=dtype, factor=10.0), name
    if lengths is not None:
        unseen = torch.arange(x.shape[1]) >= lengths.view(-1, 1).long()
        assert (got[0][unseen.to(DEVICE)] == 0).all(), "dx of unseen tokens must be 0"
    clean = core_triton_bwd(x.to(dtype).to(DEVICE), a.float().to(DEVICE), p.float().to(DEVICE), *args)
    for name, gt, gc in zip(("dx", "da", "dp"), got, clean, strict=True):
        assert torch.equal(gt, gc), f"unseen tokens changed {name}"


@pytest.mark.parametrize("k", (6, 19))
def test_triton_core_indexed_autograd(k, monkeypatch):
    """Autograd of the Triton core with pidx, lengths, normalize=False: the Triton backward op
    for K <= 16, the analytic fallback past it (K = 19, over three forward K tiles); both
    against float64 autograd of core_torch."""
    import lmini_kernels.ops.compress.triton_op as op

    calls = []
    real = op.core_triton_bwd
    monkeypatch.setattr(op, "core_triton_bwd", lambda *args: calls.append(1) or real(*args))
    (x, a, p), _, lengths, pidx = _indexed_case(4, 11, 14, k, 5, torch.float32, True, True, False)
    leaves = [v.float().to(DEVICE).requires_grad_() for v in (x, a, p)]
    acc, lse = op.core_triton(*leaves, 1e-5, 2, _on(pidx), _on(lengths), False)
    finite = lse.detach() > -torch.inf
    got = torch.autograd.grad((acc * 1.5).sum() + lse[finite].sum(), leaves)
    assert calls == ([1] if k <= 16 else [])
    leaves64 = [v.clone().requires_grad_() for v in (x, a, p)]
    acc64, lse64 = core_torch(*leaves64, 1e-5, pidx, lengths, False)
    ref = torch.autograd.grad((acc64 * 1.5).sum() + lse64[finite.cpu()].sum(), leaves64)
    assert_close(acc, acc64, dtype=torch.float32)
    for gt, gr in zip(got, ref, strict=True):
        assert_close(gt, gr, dtype=torch.float32, factor=10.0)


def test_triton_opcheck_indexed():
    from lmini_kernels.ops.compress.triton_op import core_triton, core_triton_bwd

    x = randn(3, 9, 12, device=DEVICE)
    a, p = randn(5, 12, device=DEVICE) * 0.5, randn(5, 4, device=DEVICE)
    pidx = torch.randint(0, 4, (3, 9), dtype=torch.int32, device=DEVICE)
    lengths = torch.tensor([9, 0, 4], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(core_triton, (x, a, p, 1e-5, 2, pidx, lengths, False))
    acc, lse = core_triton(x, a, p, 1e-5, 0, pidx, lengths, True)
    g, gl = randn(*acc.shape, device=DEVICE), randn(*lse.shape, device=DEVICE)
    torch.library.opcheck(core_triton_bwd, (x, a, p, 1e-5, acc, lse, g, gl, 0, pidx, lengths, True))


def test_triton_core_refuses_bad_index_tensors():
    from lmini_kernels.ops.compress.triton_op import core_triton

    x, a, p = randn(2, 5, 8, device=DEVICE), randn(3, 8, device=DEVICE), randn(3, 4, device=DEVICE)
    pidx = torch.zeros(2, 5, dtype=torch.int32, device=DEVICE)
    with pytest.raises(TypeError, match="pidx: expected an int32"):
        core_triton(x, a, p, 1e-5, 0, pidx.long())
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2\)"):
        core_triton(x, a, p, 1e-5, 0, pidx, torch.zeros(3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="p: expected 5 columns"):
        core_triton(x, a, p, 1e-5, 0)


def test_triton_core_wide_k_forward():
    """K = 40 (five forward K tiles) with pidx and lengths: correct, if not fast."""
    from lmini_kernels.ops.compress.triton_op import core_triton

    (x, a, p), dirty, lengths, pidx = _indexed_case(3, 10, 20, 40, 4, torch.float32, True, True, True)
    acc_ref, lse_ref = core_torch(x, a, p, 1e-5, pidx, lengths)
    acc, lse = core_triton(*dirty, 1e-5, 3, _on(pidx), _on(lengths))
    assert_close(acc, acc_ref, dtype=torch.float32)
    _assert_close_lse(lse, lse_ref)
