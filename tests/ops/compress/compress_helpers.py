"""Random compressor parameters and the float64 oracle shared by the compression tests."""

from __future__ import annotations

import torch
from utils import assert_close, non_contiguous, randn

import lmini_kernels as lk
from lmini_kernels.ops.compress.reference import compress_reference
from lmini_tools.baselines import OfficialResampler  # noqa: F401  (re-exported for the tests)


def make_params(dim: int, heads: int, c: int, grid: int, dtype=torch.float32, kv_dim: int | None = None) -> dict:
    """Random parameters (never zeros) at scales that keep the softmax neither flat nor one-hot."""

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)

    pos_q = lk.get_2d_sincos_pos_embed(dim, c)
    p = {
        "query": r(c * c, dim),
        "pos_q": pos_q.to(dtype),
        "pos_k": lk.compress_positions(pos_q, grid * grid).to(dtype),
        "ln_q_weight": 1 + r(dim, scale=0.3),
        "ln_q_bias": r(dim, scale=0.3),
        "ln_kv_weight": 1 + r(dim, scale=0.3),
        "ln_kv_bias": r(dim, scale=0.3),
        "in_proj_weight": r(3 * dim, dim, scale=dim**-0.5),
        "in_proj_bias": r(3 * dim, scale=0.3),
        "out_proj_weight": r(dim, dim, scale=dim**-0.5),
        "out_proj_bias": r(dim, scale=0.3),
    }
    if kv_dim is not None:
        p["kv_proj_weight"] = r(dim, kv_dim, scale=kv_dim**-0.5)
    return p


def weights_of(p: dict, heads: int, **scalars) -> lk.CompressWeights:
    """The :class:`CompressWeights` of a parameter dict of :func:`make_params`."""
    return lk.CompressWeights(**p, num_heads=heads, **scalars)


def oracle(x: torch.Tensor, p: dict, heads: int, need_weights: bool = False, **scalars):
    """The official math in float64 on the same (rounded) inputs."""
    return compress_reference(x.double(), weights_of(p, heads, **scalars).map(torch.Tensor.double), need_weights)


def run(x, p, heads, backend, eps: dict | None = None, **kw):
    return lk.compress(x, weights_of(p, heads, **(eps or {})), backend=backend, **kw)


def check_folded(backend: str, batch: int, grid: int, c: int, heads: int, dh: int, dtype, device: str = "cpu"):
    """The folded algorithm on ``backend`` against the float64 oracle (output and attention
    weights), x strided along the batch; returns the weights."""
    dim = heads * dh
    p = {k: v.to(device) for k, v in make_params(dim, heads, c, grid, dtype).items()}
    x = non_contiguous(
        randn(batch, grid * grid, dim, dtype=dtype, device=device, scale=2.0) + 0.5, dim=0 if batch > 1 else 1
    )
    ref, ref_w = oracle(x, p, heads, need_weights=True)
    out, w = run(x, p, heads, backend, algorithm="folded", need_weights=True)
    assert out.dtype == dtype and out.shape == (batch, c * c, dim)
    assert_close(out, ref)
    assert_close(w, ref_w)
    return w


def check_eps_numbers(backend: str, dtype=torch.float32, device: str = "cpu", algorithm: str = "auto") -> None:
    """Each LayerNorm's own eps reaches ``backend``'s numbers: features and queries of variance
    ~1e-3, where eps = 1e-2 moves the output by tens of percent. The output matches the oracle
    with the same epsilons and is far from the oracle with the default (or swapped) ones, so a
    kernel that drops or swaps an eps cannot pass."""
    heads, dim, c, grid = 2, 16, 2, 3
    p = {k: v.to(device) for k, v in make_params(dim, heads, c, grid, dtype).items()}
    p["query"] = p["query"] * 0.03
    x = randn(3, grid * grid, dim, dtype=dtype, device=device, scale=0.03)
    eps = dict(ln_q_eps=1e-6, ln_kv_eps=1e-2)
    ref = oracle(x, p, heads, **eps)[0]
    out = run(x, p, heads, backend, eps=eps, algorithm=algorithm)[0]
    assert_close(out, ref)
    for wrong in (dict(ln_q_eps=1e-5, ln_kv_eps=1e-5), dict(ln_q_eps=1e-2, ln_kv_eps=1e-6)):
        other = oracle(x, p, heads, **wrong)[0]
        assert (other - ref).norm() > 0.05 * ref.norm(), "the test inputs must make eps matter"


def check_core_new_arguments(fn, k: int, normalize: bool, dtype) -> None:
    """pidx (repeated columns of a wider p), lengths (0, 1, N and in between; NaN and inf in the
    unseen rows), normalize on and off, split counts: the C++ core ``fn`` (the CPU kernel, or
    the CUDA kernel through the emulator) against the PyTorch core in float64 on the same
    rounded x."""
    import math

    from lmini_kernels.ops.compress.core import core_torch_op

    b, n, d, t = 5, 37, 29, 23
    x = (randn(b, n, d, scale=1.5) + 0.2).to(dtype)
    a = randn(k, d, scale=0.3)
    p = randn(k, t)
    pidx = torch.randint(0, t, (b, n), dtype=torch.int32)
    lengths = torch.tensor([n, 0, 1, 17, n - 3], dtype=torch.int32)
    dirty = x.clone()
    for i, ln in enumerate(lengths.tolist()):
        dirty[i, ln:] = float("nan")
        if ln < n:
            dirty[i, -1] = float("inf")
    ref_acc, ref_lse = core_torch_op(x.double(), a.double(), p.double(), 1e-5, 0, pidx, lengths, normalize)
    seen = lengths > 0
    for splits in (1, 3, 0):
        acc, lse = fn(dirty, a, p, 1e-5, splits, pidx, lengths, normalize)
        assert torch.isfinite(acc).all()
        assert (lse[~seen] == -math.inf).all() and (acc[~seen] == 0).all()
        assert_close(acc[seen], ref_acc[seen], dtype=torch.float32)
        assert torch.allclose(lse[seen].double(), ref_lse[seen], rtol=1e-5, atol=1e-5)
