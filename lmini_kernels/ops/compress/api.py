"""Public compression op: LLaVA-Mini's query-based cross-attention compressor."""

from __future__ import annotations

import torch

from lmini_kernels.backends import reference_backend
from lmini_kernels.dispatch import check_same, check_tensor, registry
from lmini_kernels.ops.compress.positions import square_side
from lmini_kernels.ops.compress.reference import compress_reference

_REG = registry("compress")
_REG.register(reference_backend(compress_reference))

ALGORITHMS = ("auto", "folded", "projected")


def compress(
    x: torch.Tensor,
    query: torch.Tensor,
    pos_q: torch.Tensor,
    pos_k: torch.Tensor,
    ln_q_weight: torch.Tensor,
    ln_q_bias: torch.Tensor,
    ln_kv_weight: torch.Tensor,
    ln_kv_bias: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor,
    num_heads: int,
    *,
    kv_proj_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    need_weights: bool = False,
    algorithm: str = "auto",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compress each image's (or frame's) N = G*G features into Q = C*C tokens.

    Math (the official ``Resampler``): ``x_n = LayerNorm_kv(x @ kv_proj_weight.T)`` (no
    projection when ``kv_proj_weight`` is None), ``q = LayerNorm_q(query) + pos_q``, then
    multi-head attention with the packed ``in_proj`` (queries ``q``, keys ``x_n + pos_k``,
    values ``x_n``), scale 1/sqrt(D/heads), and ``out_proj``.

    Args:
        x: (B, N, kv_dim) features, N a perfect square; any batch/token strides.
        query: (Q, D) learnable queries, Q = C*C.
        pos_q: (Q, D) the C x C sin-cos table (:func:`get_2d_sincos_pos_embed`).
        pos_k: (N, D) the table at G x G (:func:`compress_positions`).
        ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias: (D,) LayerNorm parameters.
        in_proj_weight: (3D, D), in_proj_bias: (3D,): packed q/k/v projections.
        out_proj_weight: (D, D), out_proj_bias: (D,).
        num_heads: D must be a multiple of it.
        kv_proj_weight: optional (D, kv_dim), no bias.
        eps: LayerNorm epsilon.
        need_weights: also return the head-averaged attention weights (B, Q, N).
        algorithm: "auto", "folded" or "projected" (fused backends; the reference is exact
            official math either way).
        backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns:
        ``(out, attn)``: out (B, Q, D) in x's dtype; attn (B, Q, N) or None.
    """
    check_tensor("x", x, ndim=3)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    batch, n, kv_dim = x.shape
    square_side(n, "x.shape[1] (tokens per image)")
    check_tensor("query", query, ndim=2)
    nq, dim = query.shape
    square_side(nq, "query.shape[0] (number of queries)")
    if dim % num_heads != 0:
        raise ValueError(f"query.shape[1] (embed_dim) = {dim} is not divisible by num_heads = {num_heads}")
    check_tensor("pos_q", pos_q, shape=(nq, dim))
    check_tensor("pos_k", pos_k, shape=(n, dim))
    for name, t in (("ln_q_weight", ln_q_weight), ("ln_q_bias", ln_q_bias), ("ln_kv_weight", ln_kv_weight),
                    ("ln_kv_bias", ln_kv_bias), ("out_proj_bias", out_proj_bias)):  # fmt: skip
        check_tensor(name, t, shape=(dim,))
    check_tensor("in_proj_weight", in_proj_weight, shape=(3 * dim, dim))
    check_tensor("in_proj_bias", in_proj_bias, shape=(3 * dim,))
    check_tensor("out_proj_weight", out_proj_weight, shape=(dim, dim))
    if kv_proj_weight is not None:
        check_tensor("kv_proj_weight", kv_proj_weight, shape=(dim, kv_dim))
    elif kv_dim != dim:
        raise ValueError(f"x.shape[2] = {kv_dim} differs from embed_dim = {dim}; pass kv_proj_weight ({dim}, {kv_dim})")
    params = [("x", x), ("query", query), ("ln_q_weight", ln_q_weight), ("ln_q_bias", ln_q_bias),
              ("ln_kv_weight", ln_kv_weight), ("ln_kv_bias", ln_kv_bias), ("in_proj_weight", in_proj_weight),
              ("in_proj_bias", in_proj_bias), ("out_proj_weight", out_proj_weight),
              ("out_proj_bias", out_proj_bias), ("kv_proj_weight", kv_proj_weight)]  # fmt: skip
    check_same(params)
    check_same([("x", x), ("pos_q", pos_q), ("pos_k", pos_k)], dtype=False)  # the tables may be float64
    impl = _REG.select(backend, dict(params), algorithm=algorithm)
    return impl.run(
        x, query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight, in_proj_bias,
        out_proj_weight, out_proj_bias, num_heads, kv_proj_weight=kv_proj_weight, eps=eps, need_weights=need_weights,
    )  # fmt: skip
