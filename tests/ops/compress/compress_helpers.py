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


def core_case(batch: int, n: int, dim: int, k: int, cols: int | None = None, seen: list[int] | None = None):
    """Random float64 inputs of the folded core (x, a, p, pidx, lengths): pidx random columns of
    a (K, cols) p, with repeats (None without cols); lengths ``seen`` (None without)."""
    x = randn(batch, n, dim, dtype=torch.float64, scale=2.0) + 0.5
    a = randn(k, dim, dtype=torch.float64, scale=2.0 / dim**0.5)
    p = randn(k, cols or n, dtype=torch.float64)
    pidx = None if cols is None else torch.randint(0, cols, (batch, n), dtype=torch.int32)
    lengths = None if seen is None else torch.tensor(seen, dtype=torch.int32)
    return x, a, p, pidx, lengths


def check_core(core_fn, case, dtype, normalize: bool, splits: int, device: str = "cpu") -> None:
    """``core_fn`` (a C++ core op: x in ``dtype``, a and p float32) against core_torch in float64
    on the same rounded inputs; then the unseen tokens poisoned with NaN and inf must leave both
    outputs bit for bit unchanged, and an image with no seen token gives acc = 0, lse = -inf."""
    from lmini_kernels.ops.compress.folded import core_torch

    x, a, p, pidx, lengths = case
    x, a, p = x.to(dtype), a.float(), p.float()
    ref_acc, ref_lse = core_torch(x.double(), a.double(), p.double(), 1e-5, pidx, lengths, normalize)
    dev = [None if t is None else t.to(device) for t in (pidx, lengths)]
    acc, lse = core_fn(x.to(device), a.to(device), p.to(device), 1e-5, splits, *dev, normalize)
    acc, lse = acc.cpu(), lse.cpu()
    assert_close(acc, ref_acc, dtype=torch.float32)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(lse == -torch.inf, ref_lse == -torch.inf) and finite.any()
    assert_close(lse[finite], ref_lse[finite], dtype=torch.float32)
    if lengths is not None:
        empty = lengths == 0
        assert (acc[empty] == 0).all() and (lse[empty] == -torch.inf).all()
        poisoned = x.clone()
        for b, seen in enumerate(lengths.tolist()):
            poisoned[b, seen:] = float("nan")
            if seen < x.shape[1]:
                poisoned[b, seen, 0] = float("inf")
        acc2, lse2 = core_fn(poisoned.to(device), a.to(device), p.to(device), 1e-5, splits, *dev, normalize)
        assert torch.equal(acc2.cpu(), acc) and torch.equal(lse2.cpu(), lse), "an unseen token changed the output"
