"""The model's LLaMA pieces around the library's blocks (:mod:`lmini_kernels.modules.llama`).

The same decoder layer (:func:`decoder_layer`) serves the LLM and the pre-fusion layers (the
official code instantiates HF ``LlamaDecoderLayer(base_model.config)`` for pre-fusion). The
pre-fusion stage passes the library's ``prefusion_attention`` as the layers' ``attend``; the LLM
passes :func:`cached_attention` (torch SDPA over a :class:`KVCache`). Here: the config-driven
RoPE frequencies (LLaMA-3.1 scaling included), the KV cache and the LLM's attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmini_kernels.modules.llama import LlamaDecoderLayer, rope_tables

from .config import RopeScaling, TextConfig

__all__ = ["RotaryEmbedding", "KVCache", "cached_attention", "decoder_layer", "llama3_inv_freq"]


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
        return rope_tables(position_ids, self.inv_freq, dtype)


def decoder_layer(cfg: TextConfig) -> LlamaDecoderLayer:
    """One LLaMA decoder layer of ``cfg``'s shapes (the LLM's and the pre-fusion's)."""
    return LlamaDecoderLayer(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size, cfg.rms_norm_eps)


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
