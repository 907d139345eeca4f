"""Random compressor parameters and the float64 oracle shared by the compression tests."""

from __future__ import annotations

import torch

import lmini_kernels as lk
from lmini_kernels.ops.compress.reference import compress_reference
from lmini_tools.baselines import OfficialResampler  # noqa: F401  (re-exported for the tests)

PARAM_ORDER = ("query", "pos_q", "pos_k", "ln_q_weight", "ln_q_bias", "ln_kv_weight", "ln_kv_bias",
               "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")  # fmt: skip


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


def args_of(p: dict) -> list[torch.Tensor]:
    return [p[k] for k in PARAM_ORDER]


def oracle(x: torch.Tensor, p: dict, heads: int, need_weights: bool = False):
    """The official math in float64 on the same (rounded) inputs."""
    p64 = {k: v.double() for k, v in p.items()}
    return compress_reference(
        x.double(), *args_of(p64), heads, kv_proj_weight=p64.get("kv_proj_weight"), need_weights=need_weights
    )


def run(x, p, heads, backend, **kw):
    return lk.compress(x, *args_of(p), heads, kv_proj_weight=p.get("kv_proj_weight"), backend=backend, **kw)
