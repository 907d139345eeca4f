"""Random compressor parameters and the float64 oracle shared by the compression tests."""

from __future__ import annotations

import torch

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
