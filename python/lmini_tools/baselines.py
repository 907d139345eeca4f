"""The official LLaVA-Mini ``Resampler`` rebuilt module for module (for state dicts, tests and
the benchmark baseline): ``nn.MultiheadAttention`` (sequence-first, as the official code calls
it) over LayerNorm'd features plus the 2D sin-cos positions, one call per batch."""

from __future__ import annotations

import torch
from torch import nn

from lmini_kernels.ops.compress.positions import compress_positions, get_2d_sincos_pos_embed


class OfficialResampler(nn.Module):
    """Same parameters, names and forward as the official module (``kv_proj`` is an
    ``nn.Identity`` unless ``kv_dim`` differs from ``embed_dim``)."""

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.num_queries = grid_size**2
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.pos_embed = nn.Parameter(get_2d_sincos_pos_embed(embed_dim, grid_size).float()).requires_grad_(False)
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
        """x (B, N, kv_dim) -> (out (B, C*C, D), head-averaged weights (B, C*C, N)), computed as
        the official forward does (the weights come with nn.MultiheadAttention's default)."""
        pos_k = compress_positions(self.pos_embed, x.size(1))
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)
        n = x.shape[1]
        q = self.ln_q(self.query)
        out, w = self.attn(q.unsqueeze(1).repeat(1, n, 1) + self.pos_embed.unsqueeze(1), x + pos_k.unsqueeze(1), x)
        return out.permute(1, 0, 2), w
