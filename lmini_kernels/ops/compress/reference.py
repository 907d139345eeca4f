"""The oracle of the compression op: the official resamplers' math in plain PyTorch.

Official order: (kv_proj) -> LayerNorm_kv -> keys = x_n + PE_k, values = x_n; queries =
LayerNorm_q(query) (+ PE_q); nn.MultiheadAttention (packed in-projection, scale 1/sqrt(d_head),
key padding, out-projection); MiniCPM-V's epilogue LayerNorm_post(out) @ proj. Runs on any
device including ``meta`` (used for FLOP counting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmini_kernels.ops.compress.weights import CompressWeights


def key_positions(w: CompressWeights, batch: int, n: int, pos_index: torch.Tensor | None) -> torch.Tensor:
    """The key position of every token, (1 or B, N, D): ``pos_k`` itself (shared), per image,
    or rows of the ``pos_k`` table picked by ``pos_index`` (B, N)."""
    if pos_index is not None:
        return w.pos_k[pos_index.long()]
    return w.pos_k if w.pos_k.dim() == 3 else w.pos_k.unsqueeze(0)


def post_projection(out: torch.Tensor, w: CompressWeights) -> torch.Tensor:
    """MiniCPM-V's epilogue ``LayerNorm_post(out) @ proj`` (identity without one), statistics
    in float32, the product in out's dtype."""
    if w.proj is None:
        return out
    acc = torch.float64 if out.dtype == torch.float64 else torch.float32
    dim = out.shape[-1]
    normed = F.layer_norm(out.to(acc), (dim,), w.ln_post_weight.to(acc), w.ln_post_bias.to(acc), w.ln_post_eps)
    return torch.matmul(normed.to(out.dtype), w.proj)


def compress_reference(
    x: torch.Tensor,
    w: CompressWeights,
    need_weights: bool = False,
    seen: torch.Tensor | None = None,
    pos_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See :func:`lmini_kernels.compress`. Softmax in float32 (float64 stays float64).

    ``seen`` (B, N) bool: the tokens the queries attend to (all when None); the others never
    change the output, whatever they hold."""
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
    if seen is not None:
        x_n = torch.where(seen.unsqueeze(-1), x_n, 0)  # unseen tokens: garbage never reaches a product
    q_in = F.layer_norm(w.query.to(acc), (dim,), w.ln_q_weight.to(acc), w.ln_q_bias.to(acc), w.ln_q_eps).to(dtype)
    if w.pos_q is not None:
        q_in = q_in + w.pos_q.to(dtype)
    k_in = x_n + key_positions(w, batch, n, pos_index).to(dtype)
    w_q, w_k, w_v = w.in_proj_weight.chunk(3)
    b_q, b_k, b_v = w.in_proj_bias.chunk(3)
    q = F.linear(q_in, w_q, b_q).view(nq, num_heads, dh)
    k = F.linear(k_in, w_k, b_k).view(batch, n, num_heads, dh)
    v = F.linear(x_n, w_v, b_v).view(batch, n, num_heads, dh)
    scores = torch.einsum("qhd,bnhd->bhqn", q.to(acc), k.to(acc)) / math.sqrt(dh)
    if seen is not None:
        scores = scores.masked_fill(~seen.view(batch, 1, 1, n), -math.inf)
    probs = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhqn,bnhd->bqhd", probs, v.to(acc)).to(dtype).reshape(batch, nq, dim)
    out = post_projection(F.linear(o, w.out_proj_weight, w.out_proj_bias), w)
    attn = probs.mean(dim=1).to(dtype) if need_weights else None
    return out, attn
