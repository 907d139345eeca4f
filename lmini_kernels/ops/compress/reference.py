"""The oracle of the compression op: the official Resampler's math in plain PyTorch.

Official order: (kv_proj) -> LayerNorm_kv -> keys = x_n + PE_k, values = x_n; queries =
LayerNorm_q(query) + PE_q; nn.MultiheadAttention (packed in-projection, scale 1/sqrt(d_head),
out-projection). Runs on any device including ``meta`` (used for FLOP counting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmini_kernels.ops.compress.weights import CompressWeights


def compress_reference(
    x: torch.Tensor, w: CompressWeights, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See :func:`lmini_kernels.compress`. Softmax in float32 (float64 stays float64)."""
    dtype = x.dtype
    num_heads = w.num_heads
    if w.kv_proj_weight is not None:
        x = F.linear(x, w.kv_proj_weight)
    batch, n, dim = x.shape
    nq, dh = w.num_queries, dim // num_heads
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    # LayerNorm statistics in the accumulation dtype, rounded back: an oracle at the edges (fp16
    # features near 6e4 have a variance far beyond fp16's range)
    x_n = F.layer_norm(x.to(acc), (dim,), w.ln_kv_weight.to(acc), w.ln_kv_bias.to(acc), w.ln_kv_eps).to(dtype)
    q_in = F.layer_norm(w.query.to(acc), (dim,), w.ln_q_weight.to(acc), w.ln_q_bias.to(acc), w.ln_q_eps).to(dtype)
    q_in = q_in + w.pos_q.to(dtype)
    k_in = x_n + w.pos_k.to(dtype).unsqueeze(0)
    w_q, w_k, w_v = w.in_proj_weight.chunk(3)
    b_q, b_k, b_v = w.in_proj_bias.chunk(3)
    q = F.linear(q_in, w_q, b_q).view(nq, num_heads, dh)
    k = F.linear(k_in, w_k, b_k).view(batch, n, num_heads, dh)
    v = F.linear(x_n, w_v, b_v).view(batch, n, num_heads, dh)
    scores = torch.einsum("qhd,bnhd->bhqn", q.to(acc), k.to(acc)) / math.sqrt(dh)
    probs = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhqn,bnhd->bqhd", probs, v.to(acc)).to(dtype).reshape(batch, nq, dim)
    out = F.linear(o, w.out_proj_weight, w.out_proj_bias)
    attn = probs.mean(dim=1).to(dtype) if need_weights else None
    return out, attn
