"""The oracle of row_softmax: plain PyTorch, fp32 math."""

from __future__ import annotations

import torch


def row_softmax_reference(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * x) over the last dimension, computed in float32 (float64 stays float64):
    torch.softmax, except that a row whose every logit is -inf gives zeros (torch: NaN)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = x.to(acc) * scale
    y = torch.softmax(z, dim=-1)
    if z.shape[-1]:
        y = y.masked_fill((z == float("-inf")).all(dim=-1, keepdim=True), 0.0)
    return y.to(x.dtype)


def row_softmax_backward(grad: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """d/dx of softmax(scale * x) applied to ``grad``: scale * y * (grad - sum(grad * y))."""
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    g, p = grad.to(acc), y.to(acc)
    return (scale * p * (g - (g * p).sum(-1, keepdim=True))).to(y.dtype)


def autograd_setup(ctx, inputs, output) -> None:
    """``setup_context`` of the row_softmax ops (C++ and Triton): keep y and the scale."""
    ctx.scale = inputs[1]
    ctx.save_for_backward(output)


def autograd_backward(ctx, grad):
    """Backward of the row_softmax ops, from the saved output."""
    (y,) = ctx.saved_tensors
    return row_softmax_backward(grad, y, ctx.scale), None
