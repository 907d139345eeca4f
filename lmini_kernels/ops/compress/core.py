"""The streaming core of the folded compression, one torch.library op per backend.

``core(x, a, p, eps, splits, pidx, lengths, normalize) -> (acc, lse)``: for every image b and
folded row k (K = Q*heads), over the seen tokens j < lengths[b] (all N when lengths is None):

    y_j = (x_bj - mean(x_bj)) / sqrt(var(x_bj) + eps)   (LayerNorm without affine; y_j = x_bj
                                                          when normalize is False)
    s_kj = a_k . y_j + p[k, pidx[b, j]]                 (p[k, j] when pidx is None)
    acc_bk = sum_j softmax_j(s_k)_j y_j        (B, K, D) float32 (float64 for float64 x)
    lse_bk = logsumexp_j s_kj                  (B, K)

x: (B, N, D) any batch/token strides, unit stride along D (else copied); a: (K, D) and p: (K, T)
contiguous in the accumulation dtype, T = N without pidx; pidx: optional (B, N) int32, every
entry in [0, T); lengths: optional (B,) int32 in [0, N]. Unseen tokens are never read (NaN
there changes nothing); an image with no seen token gives acc = 0, lse = -inf. ``splits`` cuts
the N tokens of each image into that many independent chunks merged at the end (0: the kernel
picks); results do not depend on it beyond rounding. All ops share one fake implementation and
one analytic backward
(:func:`lmini_kernels.ops.compress.folded.core_backward`).

Ops: ``lmini::compress_folded`` (C++ in csrc/ops/compress/: CPU kernel cpu.cpp, CUDA kernel
kernel.cuh), its twin ``lmini_emu::compress_folded`` (the CUDA kernel on CPU tensors through the
host SIMT layer, tests only), ``lmini::compress_folded_torch`` (plain PyTorch, any dtype: the
float64 gradcheck route), ``lmini::compress_folded_triton`` and its backward (triton_op.py; kernels in triton.py).
"""

from __future__ import annotations

import torch

from lmini_kernels import _ext
from lmini_kernels.ops.compress.folded import core_backward, core_torch

# Positional order of every core op's arguments (the C++ schema in csrc/ops/compress/schema.h
# and the Python ops share it): x, a, p, eps, splits, pidx, lengths, normalize.
CORE_DEFAULTS = (0, None, None, True)  # splits, pidx, lengths, normalize


def core_fake(
    x: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    eps: float,
    splits: int = 0,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
):
    """Shapes and dtypes of the core's outputs (fake/meta tensors)."""
    batch, k = x.shape[0], a.shape[0]
    return x.new_empty((batch, k, x.shape[2]), dtype=a.dtype), x.new_empty((batch, k), dtype=a.dtype)


def core_args(inputs) -> tuple:
    """(x, a, p, eps, splits, pidx, lengths, normalize) from an op's inputs, defaults filled in."""
    inputs = tuple(inputs)
    return inputs + CORE_DEFAULTS[len(inputs) - 4 :]


def core_setup(ctx, inputs, output) -> None:
    """``setup_context`` of every core op: keep the tensor inputs and both outputs."""
    x, a, p, eps, _, pidx, lengths, normalize = core_args(inputs)
    ctx.eps, ctx.normalize = eps, normalize
    ctx.n_inputs = len(inputs)
    ctx.has_pidx, ctx.has_lengths = pidx is not None, lengths is not None
    ctx.save_for_backward(x, a, p, *output, pidx, lengths)


def saved_core(ctx) -> tuple:
    """(x, a, p, acc, lse, pidx, lengths) as :func:`core_setup` kept them."""
    x, a, p, acc, lse, pidx, lengths = ctx.saved_tensors
    return x, a, p, acc, lse, pidx if ctx.has_pidx else None, lengths if ctx.has_lengths else None


def core_grads(ctx, dx, da, dp) -> tuple:
    """The backward's return tuple: gradients for x, a, p, None for the other inputs."""
    _, a, p = ctx.saved_tensors[:3]
    return (dx, da.to(a.dtype), dp.to(p.dtype)) + (None,) * (ctx.n_inputs - 3)


def core_autograd_backward(ctx, g_acc, g_lse):
    """Backward of every core op (analytic, recomputing the probabilities in PyTorch)."""
    x, a, p, acc, lse, pidx, lengths = saved_core(ctx)
    dx, da, dp = core_backward(x, a, p, ctx.eps, acc, lse, g_acc, g_lse, pidx, lengths, ctx.normalize)
    return core_grads(ctx, dx, da, dp)


@torch.library.custom_op("lmini::compress_folded_torch", mutates_args=())
def core_torch_op(
    x: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    eps: float,
    splits: int = 0,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The core in plain PyTorch (any dtype, any device); ``splits`` is ignored."""
    acc, lse = core_torch(x, a, p, eps, pidx, lengths, normalize)
    return acc.contiguous(), lse.contiguous()


core_torch_op.register_fake(core_fake)
core_torch_op.register_autograd(core_autograd_backward, setup_context=core_setup)


def core_cpp(
    x: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    eps: float,
    splits: int = 0,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
):
    """The C++ core (CPU kernel, or CUDA kernel for CUDA tensors)."""
    return torch.ops.lmini.compress_folded(x, a, p, eps, splits, pidx, lengths, normalize)


def core_emulated(
    x: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    eps: float,
    splits: int = 0,
    pidx: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    normalize: bool = True,
):
    """The CUDA kernel and its glue on CPU tensors through the host SIMT layer (tests only)."""
    return torch.ops.lmini_emu.compress_folded(x, a, p, eps, splits, pidx, lengths, normalize)


for _ns in _ext.op_namespaces():
    torch.library.register_fake(f"{_ns}::compress_folded")(core_fake)
    torch.library.register_autograd(f"{_ns}::compress_folded", core_autograd_backward, setup_context=core_setup)
