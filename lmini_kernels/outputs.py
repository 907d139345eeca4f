"""Output allocation for the Python-side kernels (Triton launchers)."""

from __future__ import annotations

import torch

from lmini_kernels.env import poison_outputs


def new_output(shape, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised output tensor; filled with NaN when ``LMINI_POISON_OUTPUTS=1`` (the
    tests set it) so that an element a kernel forgets to write fails the comparison."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if poison_outputs() and out.is_floating_point():
        out.fill_(float("nan"))
    return out
