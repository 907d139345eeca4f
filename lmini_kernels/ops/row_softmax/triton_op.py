"""The Triton backend's torch.library op ``lmini::row_softmax_triton``: schema, fake and
autograd, registered when the package is imported (never first inside ``torch.compile``
tracing). This module imports no Triton: the launcher in triton.py is imported on the first
real call.
"""

from __future__ import annotations

import torch

from lmini_kernels.backends import triton_launch
from lmini_kernels.ops.row_softmax.reference import autograd_backward, autograd_setup


@torch.library.custom_op("lmini::row_softmax_triton", mutates_args=())
def row_softmax_triton(x: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * x) over the last dim with the Triton kernel (contiguous output)."""
    from lmini_kernels.ops.row_softmax import triton as kernels

    with triton_launch(kernels):
        return kernels.launch(x, scale)


@row_softmax_triton.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x.new_empty(x.shape)


row_softmax_triton.register_autograd(autograd_backward, setup_context=autograd_setup)
