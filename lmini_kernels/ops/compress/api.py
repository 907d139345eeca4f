"""Public compression op: LLaVA-Mini's query-based cross-attention compressor."""

from __future__ import annotations

import torch

from lmini_kernels.backends import cpu_backend, cuda_backend, reference_backend, triton_backend
from lmini_kernels.checks import check_same, check_tensor, square_side
from lmini_kernels.dispatch import registry
from lmini_kernels.nvtx import annotate
from lmini_kernels.ops.compress import core
from lmini_kernels.ops.compress.folded import (
    Folded,
    acc_dtype,
    attention_weights,
    compress_projected,
    epilogue,
    fold,
)
from lmini_kernels.ops.compress.reference import compress_reference

ALGORITHMS = ("auto", "folded", "projected")

# Widest embed_dim each GPU kernel keeps in registers (see their kernel files).
TRITON_MAX_DIM = 1024
CUDA_MAX_DIM = 2048


# On a GPU the folded kernels run fp32 FMAs on CUDA cores, one pass over x per 8 folded rows;
# past 16 rows (C = 1 with up to 16 heads) the projected path's tensor-core GEMMs are cheaper.
GPU_FOLDED_MAX_ROWS = 16


def choose_algorithm(algorithm: str, num_queries: int, num_heads: int, dim: int, device: str = "cpu") -> str:
    """ "folded" when heads * Q < D (per token ~2*heads*Q*D multiply-adds instead of ~2*D*D)
    and, on a GPU, heads * Q <= GPU_FOLDED_MAX_ROWS; else "projected". An explicit choice is kept."""
    if algorithm != "auto":
        return algorithm
    rows = num_heads * num_queries
    if device == "cuda" and rows > GPU_FOLDED_MAX_ROWS:
        return "projected"
    return "folded" if rows < dim else "projected"


def fold_for(
    query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight, in_proj_bias,
    out_proj_weight, out_proj_bias, num_heads, eps,
) -> Folded:  # fmt: skip
    """Everything the folded algorithm needs that depends only on the parameters (and N)."""
    f = fold(query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight, in_proj_bias,
             num_heads, eps)  # fmt: skip
    acc = acc_dtype(query.dtype)
    f.wo, f.bo = out_proj_weight.to(acc), out_proj_bias.to(acc)
    return f


def _fused(core_fn):
    """The full compression with the folded algorithm on ``core_fn`` (or the projected one)."""

    def run(
        x, query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight, in_proj_bias,
        out_proj_weight, out_proj_bias, num_heads, *, kv_proj_weight=None, eps=1e-5, need_weights=False,
        algorithm="auto", folded=None,
    ):  # fmt: skip
        dim = query.shape[1]
        if choose_algorithm(algorithm, query.shape[0], num_heads, dim, x.device.type) == "projected":
            return compress_projected(
                x, query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight,
                in_proj_bias, out_proj_weight, out_proj_bias, num_heads, kv_proj_weight, eps, need_weights,
            )  # fmt: skip
        if kv_proj_weight is not None:
            x = torch.nn.functional.linear(x, kv_proj_weight)
        if x.stride(2) != 1:
            x = x.contiguous()
        f = folded
        if f is None:
            f = fold_for(query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight,
                         in_proj_bias, out_proj_weight, out_proj_bias, num_heads, eps)  # fmt: skip
        acc, _ = core_fn(x, f.a, f.p, eps)
        out = epilogue(acc, f, f.wo, f.bo, num_heads).to(x.dtype)
        attn = attention_weights(x, f, num_heads, eps).to(x.dtype) if need_weights else None
        return out, attn

    return run


def _run_reference(*args, algorithm="auto", folded=None, **kwargs):
    return compress_reference(*args, **kwargs)


def _run_triton_core(x, a, p, eps):
    from lmini_kernels.ops.compress.triton import core_triton

    return core_triton(x, a, p, eps)


def _check_triton(dim: int, **_) -> list[str]:
    return [] if dim <= TRITON_MAX_DIM else [f"embed_dim {dim} > {TRITON_MAX_DIM} (the Triton kernel's register tile)"]


def _check_cuda(dim: int, **_) -> list[str]:
    return [] if dim <= CUDA_MAX_DIM else [f"embed_dim {dim} > {CUDA_MAX_DIM} (the CUDA kernel's register tile)"]


_REG = registry("compress")
_REG.register(cuda_backend(_fused(core.core_cpp), _fused(core.core_emulated), check=_check_cuda))
_REG.register(triton_backend(_fused(_run_triton_core), check=_check_triton))
_REG.register(cpu_backend(_fused(core.core_cpp)))
_REG.register(reference_backend(_run_reference))


@annotate("lmini::compress")
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
    folded: Folded | None = None,
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
        backend: "auto", "reference", "cpu", "triton" or "cuda". The fused backends (cpu,
            triton, cuda) run the folded algorithm in one streaming pass over x (all images in
            one launch), or the projected one, chosen by ``algorithm``.
        folded: the parameter-only tensors of the folded algorithm precomputed by
            :func:`fold_for` (``FusedResampler`` caches them); None computes them here.

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
    impl = _REG.select(backend, dict(params), algorithm=algorithm, dim=dim)
    kwargs = dict(kv_proj_weight=kv_proj_weight, eps=eps, need_weights=need_weights)
    if impl.name != "reference":
        kwargs.update(algorithm=algorithm, folded=folded)
    return impl.run(
        x, query, pos_q, pos_k, ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, in_proj_weight, in_proj_bias,
        out_proj_weight, out_proj_bias, num_heads, **kwargs,
    )  # fmt: skip
