"""The oracle of the compression op: the official Resampler's math in plain PyTorch.

Official order: (kv_proj) -> LayerNorm_kv -> keys = x_n + PE_k, values = x_n; queries =
LayerNorm_q(query) + PE_q; nn.MultiheadAttention (packed in-projection, scale 1/sqrt(d_head),
out-projection). Runs on any device including ``meta`` (used for FLOP counting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def compress_reference(
    x: torch.Tensor,
    query: torch.Tensor,
    pos_q: torch.Tensor,
    pos_k: torch.Tensor,
    ln_q_weight: torch.Tensor,
    ln_q_bias: torch.Tensor,
    ln_kv_weight: torch.Tensor,
    ln_kv_bias: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor,
    num_heads: int,
    kv_proj_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See :func:`lmini_kernels.compress`. Softmax in float32 (float64 stays float64)."""
    dtype = x.dtype
    if kv_proj_weight is not None:
        x = F.linear(x, kv_proj_weight)
    batch, n, dim = x.shape
    nq, dh = query.shape[0], dim // num_heads
    x_n = F.layer_norm(x, (dim,), ln_kv_weight, ln_kv_bias, eps)
    q_in = F.layer_norm(query, (dim,), ln_q_weight, ln_q_bias, eps) + pos_q.to(dtype)
    k_in = x_n + pos_k.to(dtype).unsqueeze(0)
    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = in_proj_bias.chunk(3)
    q = F.linear(q_in, w_q, b_q).view(nq, num_heads, dh)
    k = F.linear(k_in, w_k, b_k).view(batch, n, num_heads, dh)
    v = F.linear(x_n, w_v, b_v).view(batch, n, num_heads, dh)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scores = torch.einsum("qhd,bnhd->bhqn", q.to(acc), k.to(acc)) / math.sqrt(dh)
    probs = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhqn,bnhd->bqhd", probs, v.to(acc)).to(dtype).reshape(batch, nq, dim)
    out = F.linear(o, out_proj_weight, out_proj_bias)
    attn = probs.mean(dim=1).to(dtype) if need_weights else None
    return out, attn
