"""Shared inputs and checks of the prefusion_attention tests (every backend uses the same)."""

from __future__ import annotations

import torch
from utils import assert_close, randn

import lmini_kernels
from lmini_kernels.ops.prefusion_attention.reference import prefusion_attention_reference


def make_inputs(
    b: int,
    lq: int,
    lk: int,
    hq: int,
    hkv: int,
    d: int,
    dtype: torch.dtype = torch.float32,
    *,
    pad: bool = True,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random q, k, v and a key padding mask that hides about a third of the keys, with sample
    0 padded so that query 0 sees no key at all (its row must come out as zeros)."""
    q = randn(b, lq, hq, d, dtype=dtype, scale=scale)
    k = randn(b, lk, hkv, d, dtype=dtype, scale=scale)
    v = randn(b, lk, hkv, d, dtype=dtype)
    mask = None
    if pad:
        mask = torch.rand(b, lk) < 0.3
        mask[0, : lk - lq + 1] = True  # causal: query 0 of sample 0 sees only masked keys
        mask[-1, -1] = False
    return q, k, v, mask


def check_against_reference(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    factor: float = 1.0,
) -> torch.Tensor:
    """Run ``backend`` and compare with the float64 reference on the same (rounded) inputs."""
    out = lmini_kernels.prefusion_attention(
        q, k, v, causal=causal, key_padding_mask=mask, softmax_scale=softmax_scale, backend=backend
    )
    ref = prefusion_attention_reference(q.double(), k.double(), v.double(), causal, mask, softmax_scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, ref, dtype=q.dtype, factor=factor)
    if mask is not None and causal and mask[0, : k.shape[1] - q.shape[1] + 1].all():
        assert torch.equal(out[0, 0].float(), torch.zeros_like(out[0, 0].float())), "fully masked row is not zero"
    return out
