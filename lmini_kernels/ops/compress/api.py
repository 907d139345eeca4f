"""Public compression op: LLaVA-Mini's query-based cross-attention compressor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmini_kernels.backends import cpu_backend, cuda_backend, reference_backend, triton_backend
from lmini_kernels.dispatch import registry
from lmini_kernels.nvtx import annotate
from lmini_kernels.ops.compress import core
from lmini_kernels.ops.compress.folded import (
    Folded,
    attention_weights,
    compress_projected,
    epilogue,
    fold,
    kv_space_rows,
)
from lmini_kernels.ops.compress.reference import compress_reference
from lmini_kernels.ops.compress.triton_op import core_triton
from lmini_kernels.ops.compress.weights import CompressWeights

ALGORITHMS = ("auto", "folded", "folded_kv", "projected")

# Widest embed_dim each GPU kernel keeps in registers (see their kernel files).
TRITON_MAX_DIM = 1024
CUDA_MAX_DIM = 2048


# On a GPU the folded kernels run fp32 FMAs on CUDA cores, one pass over x per 8 folded rows;
# past 16 rows (C = 1 with up to 16 heads) the projected path's tensor-core GEMMs are cheaper.
GPU_FOLDED_MAX_ROWS = 16

# What one multiply-add of the folded core costs in multiply-adds of a large torch GEMM (fp32,
# CPU), measured with benchmarks/bench_resampler_family.py and `lmini bench compress` (2-vCPU
# AVX-512/AMX Xeon VM, 2026-12-03): below CORE_GEMM_ROWS folded rows the streaming tile kernel
# runs near a third of the GEMM rate (79 vs ~300 GFLOP/s); from there the C++ core runs its
# scores and sums as GEMMs, at the GEMM's rate (Qwen-VL: folded_kv 930 ms vs projected 1460 ms,
# the model's 60M vs 85M FLOPs per token).
CORE_GEMM_ROWS = 64
CORE_COST_TILE = 3.0
CORE_COST_GEMM = 1.0


def algorithm_costs(num_queries: int, num_heads: int, dim: int, kv_dim: int | None = None) -> dict[str, float]:
    """GEMM-equivalent FLOPs per token of each algorithm (K = heads * Q folded rows; kv_dim None
    or equal to dim: no kv_proj).

    folded: kv_proj GEMM (2 kv D) + the core in D space (4 K D, weighted by the core's cost).
    folded_kv: the variance's quadratic form (2 kv^2) + the core in kv space (4 K kv).
    projected: kv_proj + the key and value projections (4 D^2) + attention (4 Q D)."""
    k = num_heads * num_queries
    core_cost = CORE_COST_GEMM if k >= CORE_GEMM_ROWS else CORE_COST_TILE
    proj = 0.0 if kv_dim in (None, dim) else 2.0 * kv_dim * dim
    costs = {
        "folded": proj + core_cost * 4.0 * k * dim,
        "projected": proj + 4.0 * dim * dim + 4.0 * num_queries * dim,
    }
    if kv_dim not in (None, dim):
        costs["folded_kv"] = 2.0 * kv_dim * kv_dim + core_cost * 4.0 * k * kv_dim
    return costs


def choose_algorithm(
    algorithm: str, num_queries: int, num_heads: int, dim: int, device: str = "cpu", kv_dim: int | None = None
) -> str:
    """An explicit choice is kept; "auto" is the cheapest of :func:`algorithm_costs` (with
    LLaVA-Mini's sizes: "folded" when 3 * heads * Q < D), except that on a GPU more than
    GPU_FOLDED_MAX_ROWS folded rows go to "projected"."""
    if algorithm != "auto":
        return algorithm
    if device == "cuda" and num_heads * num_queries > GPU_FOLDED_MAX_ROWS:
        return "projected"
    costs = algorithm_costs(num_queries, num_heads, dim, kv_dim)
    best = "folded"
    for name, cost in costs.items():  # a plain loop, not min(key=): torch.compile traces it
        if cost < costs[best]:
            best = name
    return best


def core_layout(x: torch.Tensor, w: CompressWeights, seen: torch.Tensor | None, pos_index: torch.Tensor | None):
    """(x, pidx, lengths, perm) for the core: pidx (B, N) int32 the column of the position
    logits each token uses (None: column j), lengths (B,) int32 the seen tokens (None: all).
    A mask that is not a suffix of padding is compacted (seen tokens first, in order: ``perm``
    the gather index, None when nothing moved)."""
    batch, n = x.shape[:2]
    if pos_index is not None:
        pidx = pos_index.to(torch.int32)
    elif w.pos_k.dim() == 3:
        pidx = (torch.arange(batch, device=x.device).view(-1, 1) * n + torch.arange(n, device=x.device)).int()
    else:
        pidx = None
    if seen is None:
        return x, pidx, None, None
    lengths = seen.sum(1)
    if bool((seen == (torch.arange(n, device=x.device) < lengths.view(-1, 1))).all()):
        return x, pidx, lengths.int(), None
    perm = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)
    x = x.gather(1, perm.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    base = pidx if pidx is not None else torch.arange(n, device=x.device).expand(batch, n)
    return x, base.gather(1, perm).int(), lengths.int(), perm


def _fused(core_fn):
    """The full compression with the folded algorithms on ``core_fn`` (or the projected one)."""

    def run(x, w: CompressWeights, *, need_weights=False, algorithm="auto", folded=None, seen=None, pos_index=None):
        kv_dim = x.shape[2] if w.kv_proj_weight is not None else None
        algo = choose_algorithm(algorithm, w.num_queries, w.num_heads, w.embed_dim, x.device.type, kv_dim)
        if algo == "projected" or (algo == "folded_kv" and kv_dim is None):
            return compress_projected(x, w, need_weights, seen, pos_index)
        dtype = x.dtype
        x, pidx, lengths, perm = core_layout(x, w, seen, pos_index)
        kv_space = algo == "folded_kv"
        f = folded if folded is not None and folded.kv_space == kv_space else fold(w, kv_space)
        if kv_space:
            x = kv_space_rows(x, f, w.ln_kv_eps)
        elif w.kv_proj_weight is not None:
            x = torch.nn.functional.linear(x, w.kv_proj_weight)
        if x.stride(2) != 1:
            x = x.contiguous()
        acc, _ = core_fn(x, f.a, f.p, w.ln_kv_eps, 0, pidx, lengths, not kv_space)
        out = epilogue(acc, f, w.num_heads).to(dtype)
        attn = None
        if need_weights:
            attn = attention_weights(x, f, w.num_heads, w.ln_kv_eps, pidx, lengths, not kv_space).to(dtype)
            if perm is not None:  # back to the caller's token order
                attn = torch.zeros_like(attn).scatter_(2, perm.unsqueeze(1).expand_as(attn), attn)
        return out, attn

    return run


def _run_reference(x, w: CompressWeights, *, need_weights=False, algorithm="auto", folded=None, seen=None,
                   pos_index=None):  # fmt: skip
    return compress_reference(x, w, need_weights, seen, pos_index)


def _check_triton(core_dim: int | None, **_) -> list[str]:
    if core_dim is None or core_dim <= TRITON_MAX_DIM:
        return []
    return [f"embed_dim (or kv_dim with folded_kv) {core_dim} > {TRITON_MAX_DIM} (the Triton kernel's register tile)"]


def _check_cuda(core_dim: int | None, **_) -> list[str]:
    if core_dim is None or core_dim <= CUDA_MAX_DIM:
        return []
    return [f"embed_dim (or kv_dim with folded_kv) {core_dim} > {CUDA_MAX_DIM} (the CUDA kernel's register tile)"]


# auto order on a GPU: CUDA, then Triton. Both stream x once with fp32 FMAs on CUDA cores; the
# CUDA kernel stages each token tile in shared memory and reduces by warp shuffles, the Triton
# one holds whole rows in registers. No GPU run has measured the two yet:
# `lmini bench compress --device cuda` times both side by side.
_REG = registry("compress")
_REG.register(cuda_backend(_fused(core.core_cpp), _fused(core.core_emulated), check=_check_cuda))
_REG.register(triton_backend(_fused(core_triton), check=_check_triton))
_REG.register(cpu_backend(_fused(core.core_cpp)))
_REG.register(reference_backend(_run_reference))


def seen_tokens(
    x: torch.Tensor, key_padding_mask: torch.Tensor | None, lengths: torch.Tensor | Sequence[int] | None
) -> torch.Tensor | None:
    """(B, N) bool, True for the tokens the queries attend to (None: all), from
    ``key_padding_mask`` (True = ignored, as ``nn.MultiheadAttention``) or ``lengths``; every
    image must keep at least one token."""
    batch, n = x.shape[:2]
    if key_padding_mask is not None and lengths is not None:
        raise ValueError("key_padding_mask, lengths: pass one of them, not both")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask)
            raise TypeError(f"key_padding_mask: expected a bool tensor (True = ignored), got {got}")
        if tuple(key_padding_mask.shape) != (batch, n):
            raise ValueError(f"key_padding_mask: expected shape ({batch}, {n}), got {tuple(key_padding_mask.shape)}")
        seen = ~key_padding_mask.to(x.device)
        name = "key_padding_mask"
    elif lengths is not None:
        lengths = torch.as_tensor(lengths, device=x.device)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or tuple(lengths.shape) != (batch,):
            raise ValueError(f"lengths: expected {batch} integers (tokens seen per image), got {lengths}")
        if batch and not bool(((lengths >= 1) & (lengths <= n)).all()):
            raise ValueError(f"lengths: every image sees 1 to {n} tokens, got {lengths.tolist()}")
        seen = torch.arange(n, device=x.device) < lengths.view(-1, 1)
        name = "lengths"
    else:
        return None
    if batch and not bool(seen.any(1).all()):
        empty = torch.nonzero(~seen.any(1)).flatten().tolist()
        raise ValueError(f"{name}: hides every key of image(s) {empty}; each image needs at least one seen token")
    return seen


def _check_pos_index(pos_index: torch.Tensor, x: torch.Tensor, table: int, seen: torch.Tensor | None) -> None:
    batch, n = x.shape[:2]
    if not isinstance(pos_index, torch.Tensor) or pos_index.dtype.is_floating_point or pos_index.dtype == torch.bool:
        raise TypeError(f"pos_index: expected an integer tensor (B, N) of pos_k rows, got {type(pos_index).__name__}")
    if tuple(pos_index.shape) != (batch, n):
        raise ValueError(f"pos_index: expected shape ({batch}, {n}), got {tuple(pos_index.shape)}")
    used = pos_index if seen is None else pos_index[seen]
    if used.numel() and not bool(((used >= 0) & (used < table)).all()):
        raise ValueError(
            f"pos_index: every seen token's row must be in [0, {table}) (pos_k has {table} rows), got values "
            f"from {int(used.min())} to {int(used.max())}"
        )


@annotate("lmini::compress")
def compress(
    x: torch.Tensor,
    weights: CompressWeights,
    *,
    key_padding_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | Sequence[int] | None = None,
    pos_index: torch.Tensor | None = None,
    need_weights: bool = False,
    algorithm: str = "auto",
    backend: str = "auto",
    folded: Folded | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compress each image's (or frame's) N features into Q tokens with learnable queries: the
    query-resampler family (LLaVA-Mini, Qwen-VL, MiniCPM-V 2.0 to 4.0), one op.

    Math, with ``w = weights`` (:class:`CompressWeights`): ``x_n = LayerNorm_kv(x @
    w.kv_proj_weight.T)`` (no projection when ``kv_proj_weight`` is None), ``q =
    LayerNorm_q(w.query) (+ w.pos_q)``, then multi-head attention with the packed ``in_proj``
    (queries ``q``, keys ``x_n + pos``, values ``x_n``, pos the token's row of ``w.pos_k``),
    scale 1/sqrt(D/heads), over the seen tokens, and ``out_proj``; then, when ``w.proj`` is
    set, MiniCPM-V's ``LayerNorm_post(out) @ proj``. Each LayerNorm has its own epsilon.

    Non-finite and masked data, on every backend and algorithm (the reference included): a
    token hidden by ``key_padding_mask`` or ``lengths`` never changes any output, whatever it
    holds (NaN and inf included: padded rows may be garbage). Every query sees every other
    token of its image, so a NaN or inf in a seen token makes that image's output NaN (the
    LayerNorm of an inf token is NaN) and leaves the other images of the batch untouched; a
    NaN in a parameter reaches the outputs it feeds. Nothing turns a NaN into zeros or a
    finite-looking row.

    Args:
        x: (B, N, kv_dim) features; any batch/token strides.
        weights: the compressor's parameters (:meth:`CompressWeights.from_module` reads them
            off a resampler-family module).
        key_padding_mask: optional (B, N) bool, True for tokens to ignore (``nn.MultiheadAttention``'s
            convention; MiniCPM-V pads ragged images). A mask that is not a padded suffix is
            served by compacting the seen tokens (one gather).
        lengths: optional (B,) ints, the seen tokens of each image are its first lengths[b]
            (the cheap form of a suffix mask). Each image needs at least one seen token.
        pos_index: optional (B, N) ints: token j of image b takes row pos_index[b, j] of the
            (T, D) table ``w.pos_k`` (MiniCPM-V's ``pos_embed[:h, :w]`` slice per image).
        need_weights: also return the head-averaged attention weights (B, Q, N) (0 on unseen
            tokens).
        algorithm: "auto", "folded", "folded_kv" (kv_proj folded too: the core runs in the
            kv_dim space) or "projected" (fused backends; the reference is exact official math
            either way). "auto" follows the cost model of :func:`algorithm_costs`.
        backend: "auto", "reference", "cpu", "triton" or "cuda". The fused backends (cpu,
            triton, cuda) run the folded algorithm in one streaming pass over x (all images in
            one launch), or the projected one, chosen by ``algorithm``.
        folded: the parameter-only tensors of the folded algorithm precomputed by
            :func:`~lmini_kernels.ops.compress.folded.fold` (``FusedResampler`` caches them);
            None computes them here.

    Returns:
        ``(out, attn)``: out (B, Q, D_out) in x's dtype (D_out = D without the epilogue); attn
        (B, Q, N) or None.
    """
    if not isinstance(weights, CompressWeights):
        raise TypeError(f"weights: expected a CompressWeights, got {type(weights).__name__}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    weights.check(x, pos_index)
    has_kv = weights.kv_proj_weight is not None
    if algorithm == "folded_kv" and not has_kv:
        raise ValueError("algorithm: 'folded_kv' folds kv_proj, and these weights have no kv_proj_weight")
    seen = seen_tokens(x, key_padding_mask, lengths)
    if pos_index is not None:
        _check_pos_index(pos_index, x, weights.pos_k.shape[0], seen)
    kv_dim = x.shape[2] if has_kv else None
    chosen = choose_algorithm(algorithm, weights.num_queries, weights.num_heads, weights.embed_dim, x.device.type,
                              kv_dim)  # fmt: skip
    core_dim = {"folded": weights.embed_dim, "folded_kv": x.shape[2]}.get(chosen)
    impl = _REG.select(backend, {"x": x, **dict(weights.same_dtype_tensors())}, algorithm=chosen,
                       core_dim=core_dim)  # fmt: skip
    return impl.run(x, weights, need_weights=need_weights, algorithm=chosen, folded=folded, seen=seen,
                    pos_index=pos_index)  # fmt: skip
