"""Public pre-fusion attention op: causal attention of suffix queries over a prefix + suffix."""

from __future__ import annotations

import torch

from lmini_kernels.backends import reference_backend
from lmini_kernels.dispatch import check_same, check_tensor, registry
from lmini_kernels.ops.prefusion_attention.reference import prefusion_attention_reference

_REG = registry("prefusion_attention")
_REG.register(reference_backend(prefusion_attention_reference))


def prefusion_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """softmax(scale * q k^T + mask) v for the last Lq of Lk positions, flash-attn layout.

    Args:
        q: (B, Lq, Hq, d); k, v: (B, Lk, Hkv, d) with Lq <= Lk and Hq a multiple of Hkv
            (GQA: query head h reads key/value head h // (Hq // Hkv)).
        causal: query i (the (Lk - Lq + i)-th position) sees keys j <= Lk - Lq + i, i.e.
            the mask is aligned to the bottom-right as in flash-attn when Lq < Lk.
        key_padding_mask: optional (B, Lk) bool, True = ignore that key.
        softmax_scale: default 1/sqrt(d).
        backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns:
        (B, Lq, Hq, d) in q's dtype. A query row whose every visible key is masked returns
        zeros, never NaN.
    """
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    check_tensor("v", v, ndim=4)
    b, lq, hq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v: expected the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k: expected shape ({b}, Lk, Hkv, {d}) to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    lk, hkv = k.shape[1], k.shape[2]
    if lq > lk:
        raise ValueError(f"q: Lq = {lq} queries but only Lk = {lk} keys; the queries must be the last Lq of Lk")
    if hkv < 1 or hq % hkv != 0:
        raise ValueError(f"q has {hq} heads, not a multiple of k's {hkv} heads (GQA needs Hq % Hkv == 0)")
    if key_padding_mask is not None:
        check_tensor("key_padding_mask", key_padding_mask, shape=(b, lk), floating=False)
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask: expected dtype bool (True = ignore), got {key_padding_mask.dtype}")
    check_same([("q", q), ("k", k), ("v", v)])
    check_same([("q", q), ("key_padding_mask", key_padding_mask)], dtype=False)
    impl = _REG.select(backend, {"q": q, "k": k, "v": v}, head_dim=d)
    return impl.run(q, k, v, causal, key_padding_mask, softmax_scale)
