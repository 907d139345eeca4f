"""The oracle of prefusion_attention: plain PyTorch, float32 softmax (float64 stays float64)."""

from __future__ import annotations

import torch


def visible_mask(lq: int, lk: int, causal: bool, key_padding_mask: torch.Tensor | None, device) -> torch.Tensor:
    """(B or 1, 1, Lq, Lk) bool, True where query i may attend key j.

    The queries are the last Lq of Lk positions: with ``causal``, query i sees keys
    j <= Lk - Lq + i (bottom-right alignment, as flash-attn). ``key_padding_mask`` True hides a key.
    """
    vis = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if causal:
        qi = torch.arange(lq, device=device).unsqueeze(1) + (lk - lq)
        vis = torch.arange(lk, device=device).unsqueeze(0) <= qi
    vis = vis.view(1, 1, lq, lk)
    if key_padding_mask is not None:
        vis = vis & ~key_padding_mask.view(-1, 1, 1, lk)
    return vis


def prefusion_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """See :func:`lmini_kernels.prefusion_attention`. Rows with no visible key give zeros."""
    _, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if key_padding_mask is not None:  # hidden keys are never read: whatever they hold (NaN, inf) changes nothing
        hidden = key_padding_mask.view(-1, lk, 1, 1)
        k, v = k.masked_fill(hidden, 0.0), v.masked_fill(hidden, 0.0)
    if hq != hkv:  # GQA: query head h reads kv head h // (hq // hkv)
        k = k.repeat_interleave(hq // hkv, dim=2)
        v = v.repeat_interleave(hq // hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    vis = visible_mask(lq, lk, causal, key_padding_mask, q.device)
    scores = scores.masked_fill(~vis, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = probs.masked_fill(~vis.any(dim=-1, keepdim=True), 0.0)  # all-masked rows: 0, not NaN
    if not (causal and lq > 1):
        return torch.einsum("bhqk,bkhd->bqhd", probs, v.to(acc)).to(q.dtype)
    # A key past a query's causal horizon is visible to later queries, so it cannot be zeroed
    # like a padded one; its probability is 0 there, and 0 * NaN (or inf) would reach the
    # earlier query. So the product takes the finite V values only, and an output element whose
    # query sees a non-finite V value is NaN: query i sees keys 0 .. Lk - Lq + i (padded ones
    # are zeros by now), so "sees one" is a running OR over the keys, read at Lk - Lq + i.
    # (No data-dependent branch and no extra matmul: this traces, and FLOP counts stay those
    # of the attention.)
    bad = ~torch.isfinite(v)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.masked_fill(bad, 0.0).to(acc))
    seen = bad.to(torch.uint8).cummax(dim=1).values[:, lk - lq :].bool()  # (B, Lq, Hq, d)
    out = out.masked_fill(seen, float("nan"))
    return out.to(q.dtype)


def prefusion_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    softmax_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of :func:`prefusion_attention_reference` for the output gradient
    ``grad``, by autograd through the reference math (float32, float64 stays float64)."""
    with torch.enable_grad():
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = prefusion_attention_reference(qq, kk, vv, causal, key_padding_mask, softmax_scale)
        dq, dk, dv = torch.autograd.grad(out, (qq, kk, vv), grad.to(out.dtype))
    return dq, dk, dv


def autograd_setup(ctx, inputs, output) -> None:
    """``setup_context`` of the compiled prefusion_attention ops: keep the inputs."""
    q, k, v, causal, key_padding_mask, scale = inputs
    ctx.causal, ctx.scale = causal, scale
    ctx.save_for_backward(q, k, v, key_padding_mask)


def autograd_backward(ctx, grad):
    """Backward of the compiled ops through the reference math (the CPU route)."""
    q, k, v, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = prefusion_attention_backward(grad, q, k, v, ctx.causal, key_padding_mask, ctx.scale)
    return dq, dk, dv, None, None, None


def attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one forward, counted as torch's FlopCounterMode counts SDPA: the two dense
    products, 2 * B * Hq * Lq * Lk * d each (masked pairs included)."""
    b, lq, hq, d = q_shape
    lk = k_shape[1]
    return 4 * b * hq * lq * lk * d
