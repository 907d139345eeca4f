"""The folded and projected compression algorithms in plain PyTorch (exact up to rounding).

Folded. With ``y_j = (x_j - mu_j) * r_j`` the LayerNorm of
token j without its affine part, ``u_{q,h} = W_k,h^T q_h`` and ``s = 1/sqrt(d_head)``:

    score_{k,j} = a_k . y_j + p_{k,j} (+ a constant per k that cancels in the softmax)
    a_k = s * gamma_kv * u_k                       (K = Q*heads rows of width D)
    p_{k,j} = s * u_k . pos_k_j                    (K x N table)
    acc_k = sum_j softmax_j(score_k)_j y_j         (the streaming kernel's output, fp32)
    o_{q,h} = (W_v,h * gamma_kv) acc_k + (W_v,h beta_kv + b_v,h)
    out = out_proj(concat_h o_{q,h})

So the kernel (``compress_core``: x, a, p -> acc, lse) reads x once; everything that depends
only on parameters (a, p, the gamma-scaled value weights) is :class:`Folded`, computed by
:func:`fold` and cached by the module. Its backward (:func:`core_backward`) is analytic and
shared by every backend of the core.

Projected: the official order (project keys and values, then attention) for resamplers where
heads * Q >= D; plain PyTorch GEMMs + scaled_dot_product_attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmini_kernels.ops.compress.reference import key_positions, post_projection
from lmini_kernels.ops.compress.weights import CompressWeights


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Folded:
    """Parameter-only tensors of the folded algorithm (all in the accumulation dtype).

    a: (K, D) scaled folded queries, K = Q*heads (query-major: k = q*heads + h).
    p: (K, N) key-position logits. wv: (heads, d_head, D) value weights times gamma_kv.
    bv: (D,) value bias with W_v beta_kv folded in. wo: (D, D), bo: (D,) the out projection.
    kv_space (the fold through ``kv_proj``): a is (K, kv_dim), wv (heads, d_head, kv_dim), and
    m2 (kv_dim, kv_dim) the quadratic form of the LayerNorm's variance (see :func:`fold`).
    post_w, post_b, post_eps, proj: the MiniCPM-V epilogue (None without one).
    """

    a: torch.Tensor
    p: torch.Tensor
    wv: torch.Tensor
    bv: torch.Tensor
    wo: torch.Tensor
    bo: torch.Tensor
    m2: torch.Tensor | None = None
    post_w: torch.Tensor | None = None
    post_b: torch.Tensor | None = None
    post_eps: float = 1e-5
    proj: torch.Tensor | None = None

    @property
    def kv_space(self) -> bool:
        return self.m2 is not None


def fold(w: CompressWeights, kv_space: bool = False) -> Folded:
    """Fold the query path, the key projection and LayerNorm_kv's affine into :class:`Folded`
    (with ``wo``/``bo``, the out projection in the accumulation dtype). ``p`` covers every row
    of ``w.pos_k`` ((N, D), or (B*N, D) for per-image positions, or a (T, D) table).

    ``kv_space`` (needs ``kv_proj_weight`` W, (D, kv)): fold W too, so the core runs in the
    kv_dim space. With W_c = W minus its column means, W_c x = W x - mean(W x) exactly, so the
    LayerNorm of the projected token is y = r W_c x with r = 1 / sqrt(x^T m2 x + eps),
    m2 = W_c^T W_c / D (a positive semi-definite form: no E[y^2] - mean^2 cancellation); the
    scores are a . y = r (W_c^T a) . x and the weighted sum maps back through W_c, folded into
    the value weights. The core then takes z = r x, not normalised. Rounding (fp32, MiniCPM-V
    2.6 widths D 3584, kv 1152, 28 heads, 64 queries, N 1024, features N(0, 1) and N(3, 1)):
    at most 7.1e-7 relative per output row against the float64 reference, beside 5.9e-7 for
    "folded" and 5.3e-7 for "projected" (``tests/ops/compress/test_family_op.py`` bounds it).

    Differentiable (training recomputes it every step). Math in float32 (float64 stays)."""
    acc = acc_dtype(w.query.dtype)
    nq, dim = w.query.shape
    num_heads = w.num_heads
    dh = dim // num_heads
    w_q, w_k, w_v = w.in_proj_weight.to(acc).chunk(3)
    b_q, _, b_v = w.in_proj_bias.to(acc).chunk(3)
    q_in = F.layer_norm(w.query.to(acc), (dim,), w.ln_q_weight.to(acc), w.ln_q_bias.to(acc), w.ln_q_eps)
    if w.pos_q is not None:
        q_in = q_in + w.pos_q.to(acc)
    q = F.linear(q_in, w_q, b_q).view(nq, num_heads, dh)
    u = torch.einsum("qhe,hed->qhd", q, w_k.view(num_heads, dh, dim)).reshape(nq * num_heads, dim)
    scale = 1.0 / math.sqrt(dh)
    gamma, beta = w.ln_kv_weight.to(acc), w.ln_kv_bias.to(acc)
    a = u * (gamma * scale)
    p = (u @ w.pos_k.reshape(-1, dim).to(acc).t()) * scale
    wv = (w_v * gamma).view(num_heads, dh, dim)
    bv = w_v @ beta + b_v
    m2 = None
    if kv_space:
        if w.kv_proj_weight is None:
            raise ValueError("algorithm: 'folded_kv' folds kv_proj, and these weights have no kv_proj_weight")
        wk = w.kv_proj_weight.to(acc)
        wc = wk - wk.mean(0, keepdim=True)
        a, wv, m2 = a @ wc, wv @ wc, (wc.t() @ wc) / dim
    post = {}
    if w.proj is not None:
        post = {"post_w": w.ln_post_weight.to(acc), "post_b": w.ln_post_bias.to(acc),
                "post_eps": w.ln_post_eps, "proj": w.proj.to(acc)}  # fmt: skip
    return Folded(a.contiguous(), p.contiguous(), wv, bv, w.out_proj_weight.to(acc), w.out_proj_bias.to(acc), m2,
                  **post)  # fmt: skip


def kv_space_rows(x: torch.Tensor, f: Folded, eps: float) -> torch.Tensor:
    """z = r x, the core's input for the kv-space fold (r the 1/std of the projected token's
    LayerNorm, from the quadratic form ``f.m2``), in the accumulation dtype."""
    xf = x.to(f.m2.dtype)
    var = (torch.matmul(xf, f.m2) * xf).sum(-1, keepdim=True)
    return xf * torch.rsqrt(var.clamp_min(0) + eps)


def token_mask(n: int, lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """(B, N, 1) bool: token j of image b is seen (j < lengths[b]); None when every token is."""
    if lengths is None:
        return None
    return (torch.arange(n, device=device).view(1, n) < lengths.view(-1, 1).to(device)).unsqueeze(-1)


def gather_p(p: torch.Tensor, pidx: torch.Tensor | None, batch: int, n: int) -> torch.Tensor:
    """The key-position logits each token uses, (B or 1, N, K): ``p[:, pidx[b, j]]`` (column j
    when ``pidx`` is None)."""
    if pidx is None:
        return p.t().unsqueeze(0)
    return p.t()[pidx.long().reshape(-1)].view(batch, n, p.shape[0])


def core_inputs(x: torch.Tensor, ad: torch.dtype, eps: float, normalize: bool):
    """(y, r): y the rows the core weighs (LayerNorm without affine, or x itself), r the
    per-token 1/std (None without normalisation), in the accumulation dtype ``ad``."""
    xf = x.to(ad)
    if not normalize:
        return xf, None
    var, mu = torch.var_mean(xf, dim=-1, unbiased=False, keepdim=True)
    r = torch.rsqrt(var + eps)
    return (xf - mu) * r, r


def masked_scores(x, a, p, eps: float, pidx, lengths, normalize: bool):
    """(y, r, s, mask) of the core: the weighed rows y (0 on unseen tokens), their 1/std r, the
    scores s (B, N, K) with -inf on unseen tokens, and the (B, N, 1) seen mask (None: all)."""
    batch, n, _ = x.shape
    mask = token_mask(n, lengths, x.device)
    y, r = core_inputs(x, a.dtype, eps, normalize)
    if mask is not None:
        y = torch.where(mask, y, 0.0)
    s = torch.matmul(y, a.t()) + gather_p(p, pidx, batch, n)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    return y, r, s, mask


def core_torch(
    x: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    eps: float,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The streaming core in PyTorch (the contract every backend's kernel meets; see core.py):
    acc (B, K, D) = softmax_j(a_k . y_j + p[k, pidx[b, j]]) @ y over the seen tokens, lse (B, K).

    ``y`` = LayerNorm(x) without affine (``normalize``) or x, in the accumulation dtype of ``a``.
    Tokens j >= lengths[b] are never read: whatever they hold (NaN included) changes nothing;
    an image with no seen token gives acc = 0 and lse = -inf."""
    y, _, s, mask = masked_scores(x, a, p, eps, pidx, lengths, normalize)  # s (B, N, K)
    lse = torch.logsumexp(s, dim=1)  # (B, K)
    prob = torch.exp(s - lse.unsqueeze(1))
    if mask is not None:
        prob = torch.where(mask, prob, 0.0)  # an image with no seen token: exp(-inf - -inf) = NaN
    return torch.matmul(prob.transpose(1, 2), y), lse


def core_backward(
    x: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    eps: float,
    acc: torch.Tensor,
    lse: torch.Tensor,
    g_acc: torch.Tensor | None,
    g_lse: torch.Tensor | None,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the core for x, a and p, recomputing y and the probabilities.

    With prob_kj = exp(s_kj - lse_k): ds_kj = prob_kj (y_j . G_k - acc_k . G_k + g_lse_k),
    da_k = sum_j ds_kj y_j, dp[k, pidx_bj] += ds_kj, dy_j = sum_k prob_kj G_k + ds_kj a_k, and
    (with ``normalize``) the LayerNorm backward dx_j = r_j (dy_j - mean(dy_j) - y_j mean(dy_j * y_j)).
    Unseen tokens (j >= lengths[b]) get dx = 0 and add nothing, whatever they hold."""
    ad = a.dtype
    y, r, s, mask = masked_scores(x, a, p, eps, pidx, lengths, normalize)
    prob = torch.exp(s - lse.unsqueeze(1))  # (B, N, K)
    if mask is not None:
        prob = torch.where(mask, prob, 0.0)
    g = torch.zeros_like(acc) if g_acc is None else g_acc.to(ad)
    ds = torch.matmul(y, g.transpose(1, 2)) - (acc * g).sum(-1).unsqueeze(1)
    if g_lse is not None:
        ds = ds + g_lse.to(ad).unsqueeze(1)
    ds = prob * ds
    da = torch.einsum("bnk,bnd->kd", ds, y)
    if pidx is None:
        dp = ds.sum(0).t()
    else:
        dp = torch.zeros(p.shape[1], p.shape[0], dtype=ad, device=p.device)
        dp = dp.index_add_(0, pidx.long().reshape(-1), ds.reshape(-1, ds.shape[-1])).t()
    dy = torch.matmul(prob, g) + torch.matmul(ds, a)
    if normalize:
        dx = r * (dy - dy.mean(-1, keepdim=True) - y * (dy * y).mean(-1, keepdim=True))
    else:
        dx = dy
    if mask is not None:
        dx = torch.where(mask, dx, 0.0)
    return dx.to(x.dtype), da, dp.contiguous()


def epilogue(acc: torch.Tensor, f: Folded, num_heads: int) -> torch.Tensor:
    """acc (B, Q*heads, D) -> out (B, Q, D) in the accumulation dtype: per-head value
    projection (gamma-folded) after the weighted sum, then out_proj."""
    batch, k, dim = acc.shape
    nq = k // num_heads
    # Every backend, CPU included: torch's batched GEMMs beat a C++ epilogue (one parallel
    # region of per-row GEMVs, since deleted) at every size on the AVX2 EPYC of 2026-12-02, 2
    # threads, D = 1024, 8 heads: 1 row 0.27 vs 1.0 ms, 64 rows 3.1 vs 7.1 ms, 256 rows 8.8 vs 28.6 ms.
    z = acc.view(batch * nq, num_heads, dim).transpose(0, 1)  # (H, B*Q, D or kv_dim)
    # Bias fused into the batched GEMM and into out_proj's GEMM: few ops, few parallel regions.
    dh = f.wv.shape[1]
    o = torch.baddbmm(f.bv.view(num_heads, 1, dh), z, f.wv.transpose(1, 2))  # (H, B*Q, dh)
    o = o.transpose(0, 1).reshape(batch, nq, -1)
    out = F.linear(o, f.wo, f.bo)
    if f.proj is not None:  # MiniCPM-V: LayerNorm_post, then @ proj, still in fp32
        out = torch.matmul(F.layer_norm(out, (out.shape[-1],), f.post_w, f.post_b, f.post_eps), f.proj)
    return out


def attention_weights(
    x: torch.Tensor,
    f: Folded,
    num_heads: int,
    eps: float,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Head-averaged attention weights (B, Q, N) from the folded scores (one extra pass) on the
    core's input ``x``; unseen tokens get weight 0."""
    batch, n, _ = x.shape
    _, _, s, mask = masked_scores(x, f.a, f.p, eps, pidx, lengths, normalize)  # (B, N, K)
    prob = torch.softmax(s, dim=1)
    if mask is not None:
        prob = torch.where(mask, prob, 0.0)
    k = prob.shape[-1]
    return prob.view(batch, n, k // num_heads, num_heads).mean(-1).transpose(1, 2)


def compress_projected(
    x: torch.Tensor,
    w: CompressWeights,
    need_weights: bool = False,
    seen: torch.Tensor | None = None,
    pos_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain order (keys and values projected for every token, then attention), batched
    over all images in one call; math in x's dtype except LayerNorm/softmax statistics.
    ``seen`` (B, N) bool: the tokens attended to (unseen ones never change the output)."""
    dtype = x.dtype
    num_heads = w.num_heads
    if w.kv_proj_weight is not None:
        x = F.linear(x, w.kv_proj_weight)
    batch, n, dim = x.shape
    nq, dh = w.num_queries, dim // num_heads
    w_q, w_k, w_v = w.in_proj_weight.chunk(3)
    b_q, b_k, b_v = w.in_proj_bias.chunk(3)
    x_n = F.layer_norm(x, (dim,), w.ln_kv_weight, w.ln_kv_bias, w.ln_kv_eps)
    if seen is not None:
        x_n = torch.where(seen.unsqueeze(-1), x_n, 0)
    q_in = F.layer_norm(w.query, (dim,), w.ln_q_weight, w.ln_q_bias, w.ln_q_eps)
    if w.pos_q is not None:
        q_in = q_in + w.pos_q.to(dtype)
    q = F.linear(q_in, w_q, b_q).view(1, nq, num_heads, dh).transpose(1, 2).expand(batch, -1, -1, -1)
    k_in = x_n + key_positions(w, batch, n, pos_index).to(dtype)
    k = F.linear(k_in, w_k, b_k).view(batch, n, num_heads, dh).transpose(1, 2)
    v = F.linear(x_n, w_v, b_v).view(batch, n, num_heads, dh).transpose(1, 2)
    # Scores, softmax and the weighted sum as plain GEMMs in the accumulation dtype, not
    # scaled_dot_product_attention: torch's CPU SDPA turns a NaN query row into zeros, which
    # would hide a NaN in the weights (the contract: NaN in what a query sees reaches its row).
    acc = acc_dtype(dtype)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) / math.sqrt(dh)  # (B, H, Q, N)
    if seen is not None:
        s = s.masked_fill(~seen.view(batch, 1, 1, n), -math.inf)
    prob = torch.softmax(s, dim=-1)
    o = torch.matmul(prob, v.to(acc)).to(dtype)  # (B, H, Q, dh)
    out = F.linear(o.transpose(1, 2).reshape(batch, nq, dim), w.out_proj_weight, w.out_proj_bias)
    attn = prob.mean(1).to(dtype) if need_weights else None
    return post_projection(out, w), attn
