"""LLaMA building blocks in plain PyTorch, with Hugging Face ``LlamaDecoderLayer`` parameter names.

The same :class:`LlamaDecoderLayer` serves the LLM and the pre-fusion layers (the official
code instantiates HF ``LlamaDecoderLayer(base_model.config)`` for pre-fusion). Attention
itself is injected: each layer projects q/k/v (with RoPE applied) and hands them, in the
flash-attn layout (B, L, H, d), to an ``attend`` callable. The pre-fusion stage passes the
library's ``prefusion_attention``; the LLM passes :func:`cached_attention` (torch SDPA over
a :class:`KVCache`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import RopeScaling, TextConfig

__all__ = [
    "RMSNorm",
    "RotaryEmbedding",
    "LlamaDecoderLayer",
    "KVCache",
    "cached_attention",
    "llama3_inv_freq",
    "apply_rotary",
]

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """LLaMA RMSNorm: normalise in float32, cast back, then scale (HF order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """LLaMA-3.1 frequency scaling: long wavelengths divided by ``factor``, short ones kept,
    a linear blend (in 1/wavelength) in between."""
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / s.factor, blended)
    return torch.where(wavelen < high_wavelen, inv_freq, out)


class RotaryEmbedding(nn.Module):
    """RoPE tables for arbitrary (per-sample) position ids; ``inv_freq`` is not a checkpoint key."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        d = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        if cfg.rope_scaling is not None:
            inv_freq = llama3_inv_freq(inv_freq, cfg.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, L, head_dim), computed in float32 and cast to ``dtype``."""
        freqs = position_ids.float()[..., None] * self.inv_freq.float().to(position_ids.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, L, H, d) by the tables (B, L, d) (HF's half-split convention)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + _rotate_half(x) * sin


class LlamaAttention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        o = attend(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v)  # (b, n, Hq, d)
        return self.o_proj(o.reshape(b, n, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x))."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend)
        return x + self.mlp(self.post_attention_layernorm(x))


class KVCache:
    """Pre-allocated keys/values of one layer, (B, Hkv, max_len, d), written slot by slot."""

    def __init__(
        self, batch: int, num_kv_heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device
    ) -> None:
        self.k = torch.zeros(batch, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, L, Hkv, d) at slots [start, start+L); return all slots [0, start+L)."""
        end = start + k.shape[1]
        self.k[:, :, start:end] = k.transpose(1, 2)
        self.v[:, :, start:end] = v.transpose(1, 2)
        return self.k[:, :, :end], self.v[:, :, :end]


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cache: KVCache | None,
    start: int,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """LLM attention with torch SDPA. q/k/v (B, L, H, d) are the new tokens at slots
    [start, start+L); ``key_valid`` (B, >= start+L) marks slots that hold real tokens.
    Causal by slot index, GQA by head grouping. Returns (B, L, Hq, d)."""
    n = q.shape[1]
    if cache is not None:
        kk, vv = cache.update(start, k, v)
    else:
        assert start == 0
        kk, vv = k.transpose(1, 2), v.transpose(1, 2)
    total = kk.shape[2]
    slots_q = torch.arange(start, start + n, device=q.device)
    allowed = torch.arange(total, device=q.device)[None, :] <= slots_q[:, None]  # (L, total)
    allowed = allowed[None, None] & key_valid[:, None, None, :total]
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), kk, vv, attn_mask=allowed, enable_gqa=kk.shape[1] != q.shape[2]
    )
    return o.transpose(1, 2)
