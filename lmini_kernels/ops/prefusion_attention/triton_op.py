"""The Triton backend's torch.library ops: ``lmini::prefusion_attention_triton`` (forward:
output and log-sum-exp) and ``lmini::prefusion_attention_triton_bwd`` (dq, dk, dv), with their
fake and autograd implementations, registered when the package is imported (never first inside
``torch.compile`` tracing). This module imports no Triton: the launchers in triton.py are
imported on the first real call.
"""

from __future__ import annotations

import torch

from lmini_kernels.backends import triton_launch


@torch.library.custom_op("lmini::prefusion_attention_triton", mutates_args=())
def prefusion_attention_triton_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    splits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton forward as a torch op: (out, base-2 log-sum-exp (B, Hq, Lq))."""
    from lmini_kernels.ops.prefusion_attention import triton as kernels

    with triton_launch(kernels):
        return kernels.attention_forward(q, k, v, causal, key_padding_mask, scale, splits)


@prefusion_attention_triton_op.register_fake
def _(q, k, v, causal, key_padding_mask, scale, splits):
    b, lq, hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((b, hq, lq), dtype=torch.float32)


@torch.library.custom_op("lmini::prefusion_attention_triton_bwd", mutates_args=())
def prefusion_attention_triton_bwd_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton backward as a torch op: (dq, dk, dv)."""
    from lmini_kernels.ops.prefusion_attention import triton as kernels

    with triton_launch(kernels):
        return kernels.attention_backward(grad_out, q, k, v, key_padding_mask, out, lse, causal, scale)


@prefusion_attention_triton_bwd_op.register_fake
def _(grad_out, q, k, v, key_padding_mask, out, lse, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output) -> None:
    q, k, v, causal, key_padding_mask, scale, _ = inputs
    out, lse = output
    ctx.causal, ctx.scale = causal, scale
    ctx.save_for_backward(q, k, v, key_padding_mask, out, lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, key_padding_mask, out, lse = ctx.saved_tensors
    dq, dk, dv = prefusion_attention_triton_bwd_op(grad_out, q, k, v, key_padding_mask, out, lse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None, None


prefusion_attention_triton_op.register_autograd(_backward, setup_context=_setup)
