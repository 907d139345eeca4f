"""Public compression op: LLaVA-Mini's query-based cross-attention compressor."""

from __future__ import annotations

import torch

from lmini_kernels.backends import cpu_backend, cuda_backend, reference_backend, triton_backend
from lmini_kernels.dispatch import registry
from lmini_kernels.nvtx import annotate
from lmini_kernels.ops.compress import core
from lmini_kernels.ops.compress.folded import Folded, attention_weights, compress_projected, epilogue, fold
from lmini_kernels.ops.compress.reference import compress_reference
from lmini_kernels.ops.compress.triton_op import core_triton
from lmini_kernels.ops.compress.weights import CompressWeights

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


def _fused(core_fn):
    """The full compression with the folded algorithm on ``core_fn`` (or the projected one)."""

    def run(x, w: CompressWeights, *, need_weights=False, algorithm="auto", folded=None):
        if choose_algorithm(algorithm, w.num_queries, w.num_heads, w.embed_dim, x.device.type) == "projected":
            return compress_projected(x, w, need_weights)
        if w.kv_proj_weight is not None:
            x = torch.nn.functional.linear(x, w.kv_proj_weight)
        if x.stride(2) != 1:
            x = x.contiguous()
        f = fold(w) if folded is None else folded
        acc, _ = core_fn(x, f.a, f.p, w.ln_kv_eps)
        out = epilogue(acc, f, w.num_heads).to(x.dtype)
        attn = attention_weights(x, f, w.num_heads, w.ln_kv_eps).to(x.dtype) if need_weights else None
        return out, attn

    return run


def _run_reference(x, w: CompressWeights, *, need_weights=False, algorithm="auto", folded=None):
    return compress_reference(x, w, need_weights)


def _check_triton(dim: int, **_) -> list[str]:
    return [] if dim <= TRITON_MAX_DIM else [f"embed_dim {dim} > {TRITON_MAX_DIM} (the Triton kernel's register tile)"]


def _check_cuda(dim: int, **_) -> list[str]:
    return [] if dim <= CUDA_MAX_DIM else [f"embed_dim {dim} > {CUDA_MAX_DIM} (the CUDA kernel's register tile)"]


# auto order on a GPU: CUDA, then Triton. Both stream x once with fp32 FMAs on CUDA cores; the
# CUDA kernel stages each token tile in shared memory and reduces by warp shuffles, the Triton
# one holds whole rows in registers. No GPU run has measured the two yet:
# `lmini bench compress --device cuda` times both side by side.
_REG = registry("compress")
_REG.register(cuda_backend(_fused(core.core_cpp), _fused(core.core_emulated), check=_check_cuda))
_REG.register(triton_backend(_fused(core_triton), check=_check_triton))
_REG.register(cpu_backend(_fused(core.core_cpp)))
_REG.register(reference_backend(_run_reference))


@annotate("lmini::compress")
def compress(
    x: torch.Tensor,
    weights: CompressWeights,
    *,
    need_weights: bool = False,
    algorithm: str = "auto",
    backend: str = "auto",
    folded: Folded | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compress each image's (or frame's) N = G*G features into Q = C*C tokens.

    Math (the official ``Resampler``), with ``w = weights`` (:class:`CompressWeights`):
    ``x_n = LayerNorm_kv(x @ w.kv_proj_weight.T)`` (no projection when ``kv_proj_weight`` is
    None), ``q = LayerNorm_q(w.query) + w.pos_q``, then multi-head attention with the packed
    ``in_proj`` (queries ``q``, keys ``x_n + w.pos_k``, values ``x_n``), scale 1/sqrt(D/heads),
    and ``out_proj``. Each LayerNorm has its own epsilon (``ln_q_eps``, ``ln_kv_eps``).

    Non-finite data, on every backend and algorithm (the reference included): every query sees
    every token of its image, so a NaN or inf anywhere in an image's features makes that
    image's output NaN (the LayerNorm of an inf token is NaN) and leaves the other images of
    the batch untouched; a NaN in a parameter reaches the outputs it feeds. Nothing turns a NaN
    into zeros or a finite-looking row.

    Args:
        x: (B, N, kv_dim) features, N a perfect square; any batch/token strides.
        weights: the compressor's parameters (:meth:`CompressWeights.from_module` reads them
            off an official-layout module).
        need_weights: also return the head-averaged attention weights (B, Q, N).
        algorithm: "auto", "folded" or "projected" (fused backends; the reference is exact
            official math either way).
        backend: "auto", "reference", "cpu", "triton" or "cuda". The fused backends (cpu,
            triton, cuda) run the folded algorithm in one streaming pass over x (all images in
            one launch), or the projected one, chosen by ``algorithm``.
        folded: the parameter-only tensors of the folded algorithm precomputed by
            :func:`~lmini_kernels.ops.compress.folded.fold` (``FusedResampler`` caches them);
            None computes them here.

    Returns:
        ``(out, attn)``: out (B, Q, D) in x's dtype; attn (B, Q, N) or None.
    """
    if not isinstance(weights, CompressWeights):
        raise TypeError(f"weights: expected a CompressWeights, got {type(weights).__name__}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    weights.check(x)
    impl = _REG.select(backend, {"x": x, **dict(weights.same_dtype_tensors())}, algorithm=algorithm,
                       dim=weights.embed_dim)  # fmt: skip
    return impl.run(x, weights, need_weights=need_weights, algorithm=algorithm, folded=folded)
