"""Public row_softmax and its backends."""

from __future__ import annotations

import torch

from lmini_kernels import _ext
from lmini_kernels.backends import cpu_backend, cuda_backend, reference_backend, triton_backend
from lmini_kernels.checks import check_tensor
from lmini_kernels.dispatch import registry
from lmini_kernels.nvtx import annotate
from lmini_kernels.ops.row_softmax.reference import autograd_backward, autograd_setup, row_softmax_reference
from lmini_kernels.ops.row_softmax.triton_op import row_softmax_triton


def _run_cpp(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.ops.lmini.row_softmax(x, scale)


def _run_emulated(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The CUDA kernel and its glue on CPU tensors (host SIMT layer): tests only."""
    return torch.ops.lmini_emu.row_softmax(x, scale)


_REG = registry("row_softmax")
_REG.register(cuda_backend(_run_cpp, _run_emulated))
_REG.register(triton_backend(row_softmax_triton))
_REG.register(cpu_backend(_run_cpp))
_REG.register(reference_backend(row_softmax_reference))


@annotate("lmini::row_softmax")
def row_softmax(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """Softmax of ``scale * x`` over the last dimension.

    Args:
        x: any shape with at least one dimension; float32, float16 or bfloat16 (float64 on the
            reference backend). Any strides (non-contiguous inputs are copied once).
        scale: multiplies the logits before the softmax.
        backend: ``"auto"`` (fastest that supports the inputs), ``"reference"``, ``"cpu"``,
            ``"triton"`` or ``"cuda"``.

    Returns:
        A contiguous tensor of x's shape and dtype; math in float32. Non-finite values as in
        ``torch.softmax(scale * x)``: a NaN logit (or a +inf one, through inf - inf) makes its
        row NaN; except that a row whose logits are all -inf gives zeros, never NaN. Any finite
        scale, of either sign. Differentiable on every backend.
    """
    check_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dimension, got a scalar")
    return _REG.select(backend, {"x": x}).run(x, float(scale))


for _ns in _ext.op_namespaces():
    torch.library.register_fake(f"{_ns}::row_softmax")(lambda x, scale: x.new_empty(x.shape))
    torch.library.register_autograd(f"{_ns}::row_softmax", autograd_backward, setup_context=autograd_setup)
