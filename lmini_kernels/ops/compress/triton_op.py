"""The Triton backend's torch.library ops for the folded core: ``lmini::compress_folded_triton``
(forward) and ``lmini::compress_folded_triton_bwd`` (its backward kernel), with their fake and
autograd implementations, registered when the package is imported (never first inside
``torch.compile`` tracing). This module imports no Triton: the launchers in triton.py are
imported on the first real call.
"""

from __future__ import annotations

import torch

from lmini_kernels.backends import triton_launch
from lmini_kernels.ops.compress.core import core_fake, core_grads, core_setup, saved_core
from lmini_kernels.ops.compress.folded import core_backward


@torch.library.custom_op("lmini::compress_folded_triton", mutates_args=())
def core_triton(
    x: torch.Tensor, a: torch.Tensor, p: torch.Tensor, eps: float, splits: int = 0,
    pidx: torch.Tensor | None = None, lengths: torch.Tensor | None = None, normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The folded core with the Triton kernel: (acc (B, K, D) fp32, lse (B, K) fp32); the
    arguments as in core.py (pidx, lengths int32)."""
    from lmini_kernels.ops.compress import triton as kernels

    with triton_launch(kernels):
        return kernels.launch(x, a, p, eps, splits, pidx, lengths, normalize)


@torch.library.custom_op("lmini::compress_folded_triton_bwd", mutates_args=())
def core_triton_bwd(
    x: torch.Tensor, a: torch.Tensor, p: torch.Tensor, eps: float, acc: torch.Tensor, lse: torch.Tensor,
    g_acc: torch.Tensor, g_lse: torch.Tensor, splits: int = 0, pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None, normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Gradients (dx, da, dp) of the folded core with the Triton kernel (see ``triton_bwd_fits``
    in triton.py for the sizes it takes; fp32 a). ``splits``: 0 lets the kernel choose; pidx,
    lengths, normalize as in the forward."""
    from lmini_kernels.ops.compress import triton as kernels

    with triton_launch(kernels):
        return kernels.launch_bwd(x, a, p, eps, acc, lse, g_acc, g_lse, splits, pidx, lengths, normalize)


@core_triton_bwd.register_fake
def _(x, a, p, eps, acc, lse, g_acc, g_lse, splits=0, pidx=None, lengths=None, normalize=True):
    return x.new_empty(x.shape), torch.empty_like(a), torch.empty_like(p)


def _core_triton_backward(ctx, g_acc, g_lse):
    """Backward of the Triton core: the Triton kernel when its tiles fit (``triton_bwd_fits``:
    K <= 16; fp32 a, x not float64), pidx, lengths and normalize=False included; else the
    analytic PyTorch one."""
    from lmini_kernels.ops.compress.triton import triton_bwd_fits

    x, a, p, acc, lse, pidx, lengths = saved_core(ctx)
    if triton_bwd_fits(a.shape[0], x.shape[2]) and a.dtype == torch.float32 and x.dtype != torch.float64:
        g_acc = torch.zeros_like(acc) if g_acc is None else g_acc
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse.to(lse.dtype)
        dx, da, dp = core_triton_bwd(x, a, p, ctx.eps, acc, lse, g_acc, g_lse, 0, pidx, lengths, ctx.normalize)
    else:
        dx, da, dp = core_backward(x, a, p, ctx.eps, acc, lse, g_acc, g_lse, pidx, lengths, ctx.normalize)
    return core_grads(ctx, dx, da, dp)


core_triton.register_fake(core_fake)
core_triton.register_autograd(_core_triton_backward, setup_context=core_setup)
