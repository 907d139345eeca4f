"""Random compressor parameters and the float64 oracle shared by the compression tests."""

from __future__ import annotations

import torch
from torch import nn

import lmini_kernels as lk
from lmini_kernels.ops.compress.reference import compress_reference

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


class OfficialResampler(nn.Module):
    """Built exactly as the official module (nn.MultiheadAttention + nn.LayerNorm), for state dicts."""

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.num_queries = grid_size**2
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.pos_embed = nn.Parameter(lk.get_2d_sincos_pos_embed(embed_dim, grid_size).float()).requires_grad_(False)
        self.query = nn.Parameter(torch.zeros(self.num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        if kv_dim is not None and kv_dim != embed_dim:
            self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        else:
            self.kv_proj = nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim)
        self.ln_kv = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official (sequence-first) forward, returning the head-averaged weights too."""
        pos_k = lk.compress_positions(self.pos_embed, x.size(1))
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)
        n = x.shape[1]
        q = self.ln_q(self.query)
        out, w = self.attn(
            q.unsqueeze(1).repeat(1, n, 1) + self.pos_embed.unsqueeze(1), x + pos_k.unsqueeze(1), x, need_weights=True
        )
        return out.permute(1, 0, 2), w
