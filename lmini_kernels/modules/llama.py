"""LLaMA building blocks with Hugging Face ``LlamaDecoderLayer`` parameter names, shared by the
library's :class:`~lmini_kernels.modules.FusedPreFusion` and the reference model.

Attention itself is injected: a layer projects q/k/v (RoPE applied) and hands them, in the
flash-attn layout (B, L, H, d), to an ``attend`` callable (the pre-fusion passes
:func:`lmini_kernels.prefusion_attention`; an LLM passes its cached attention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attend", "LlamaAttention", "LlamaDecoderLayer", "LlamaMLP", "RMSNorm", "apply_rotary", "rope_tables"]

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """LLaMA RMSNorm in HF order: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, L, head_dim) for position ids (B, L) and inverse frequencies
    (head_dim / 2,): computed in float32, then cast to ``dtype`` (HF order)."""
    freqs = position_ids.float()[..., None] * inv_freq.float().to(position_ids.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, L, H, d) by the tables (B, L, d) of :func:`rope_tables` (HF's half-split
    convention)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + _rotate_half(x) * sin


class LlamaAttention(nn.Module):
    """q/k/v/o projections (no bias), GQA: ``num_heads`` query heads over ``num_kv_heads``."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, hidden // num_heads
        d = self.head_dim
        self.q_proj = nn.Linear(hidden, num_heads * d, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(num_heads * d, hidden, bias=False)

    def project_q(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotated queries (B, L, num_heads, d) of x (B, L, hidden)."""
        b, n, _ = x.shape
        return apply_rotary(self.q_proj(x).view(b, n, self.num_heads, self.head_dim), cos, sin)

    def project_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (B, L, num_kv_heads, d) of x (B, L, hidden)."""
        b, n, _ = x.shape
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        return apply_rotary(k, cos, sin), v

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """O-projection of attention outputs (B, L, num_heads, d)."""
        b, n = o.shape[:2]
        return self.o_proj(o.reshape(b, n, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        k, v = self.project_kv(x, cos, sin)
        return self.output(attend(self.project_q(x, cos, sin), k, v))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x))."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(hidden, num_heads, num_kv_heads)
        self.mlp = LlamaMLP(hidden, intermediate)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The rest of the block after attention, for the rows of x: residual + O-projection of
        the attention output o (B, L, num_heads, d), then residual + MLP."""
        x = x + self.self_attn.output(o)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))
