"""Public pre-fusion attention op: causal attention of suffix queries over a prefix + suffix."""

from __future__ import annotations

import torch

from lmini_kernels import _ext
from lmini_kernels.backends import cpu_backend, cuda_backend, reference_backend, triton_backend
from lmini_kernels.checks import check_same, check_tensor
from lmini_kernels.dispatch import registry
from lmini_kernels.nvtx import annotate
from lmini_kernels.ops.prefusion_attention.reference import (
    attention_flops,
    autograd_backward,
    autograd_setup,
    prefusion_attention_reference,
)
from lmini_kernels.ops.prefusion_attention.triton_op import prefusion_attention_triton_op

# Head dims the compiled kernels take (the reference takes any).
CPU_MAX_HEAD_DIM = 256
TRITON_HEAD_DIMS = (16, 32, 64, 80, 96, 128)  # 16, 32: small models (tests)
CUDA_HEAD_DIMS = (64, 80, 96, 128)


def _scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)


def _run_cpp(q, k, v, causal, key_padding_mask, softmax_scale):
    return torch.ops.lmini.prefusion_attention(q, k, v, causal, key_padding_mask, _scale(q, softmax_scale))


def _run_triton(q, k, v, causal, key_padding_mask, softmax_scale):
    return prefusion_attention_triton_op(q, k, v, causal, key_padding_mask, _scale(q, softmax_scale), 0)[0]


def _run_emulated(q, k, v, causal, key_padding_mask, softmax_scale):
    """The CUDA kernel and its glue on CPU tensors (host SIMT layer): tests only."""
    return torch.ops.lmini_emu.prefusion_attention(q, k, v, causal, key_padding_mask, _scale(q, softmax_scale))


# The Triton kernels index with 32-bit offsets (program id times stride), so every element
# offset of q, k, v and the output must fit in int32. (The grids need no bound of their own
# here: tiles are on axis x, batches past 65,535 (sample, head) pairs run in slices, and every
# grid is checked before launch by checks.check_grid.)
TRITON_MAX_OFFSET = 2**31 - 1


def max_element_offset(*tensors: torch.Tensor) -> int:
    """The largest element offset any of ``tensors`` reaches from its first element."""
    return max((sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)) for t in tensors if t.numel()),
               default=0)  # fmt: skip


def _check_cpu(head_dim: int, **_) -> list[str]:
    return [] if head_dim <= CPU_MAX_HEAD_DIM else [f"head dim {head_dim} > {CPU_MAX_HEAD_DIM}"]


def _check_triton(head_dim: int, max_offset: int = 0, **_) -> list[str]:
    reasons = [] if head_dim in TRITON_HEAD_DIMS else [f"head dim {head_dim} not in {TRITON_HEAD_DIMS}"]
    if max_offset > TRITON_MAX_OFFSET:
        reasons.append(f"element offsets up to {max_offset} exceed int32 (the Triton kernels' 32-bit indexing)")
    return reasons


def _check_cuda(head_dim: int, **_) -> list[str]:
    return [] if head_dim in CUDA_HEAD_DIMS else [f"head dim {head_dim} not in {CUDA_HEAD_DIMS}"]


# auto order on a GPU: Triton first. Its kernel is flash-attention style (tl.dot on tensor
# cores, split keys for short suffixes); the CUDA kernel is a CUDA-core correctness baseline
# (csrc/ops/prefusion_attention/kernel.cuh) that the host SIMT layer can run. No GPU run has
# measured the two yet: `lmini bench prefusion --device cuda` times both side by side.
_REG = registry("prefusion_attention")
_REG.register(triton_backend(_run_triton, check=_check_triton))
_REG.register(cuda_backend(_run_cpp, _run_emulated, check=_check_cuda))
_REG.register(cpu_backend(_run_cpp, check=_check_cpu))
_REG.register(reference_backend(prefusion_attention_reference))


@annotate("lmini::prefusion_attention")
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
            (GQA: query head h reads key/value head h // (Hq // Hkv)). float32, float16 or
            bfloat16 (float64 on the reference backend); any strides.
        causal: query i (the (Lk - Lq + i)-th position) sees keys j <= Lk - Lq + i, i.e.
            the mask is aligned to the bottom-right as in flash-attn when Lq < Lk.
        key_padding_mask: optional (B, Lk) bool, True = ignore that key.
        softmax_scale: default 1/sqrt(d).
        backend: "auto", "reference", "cpu", "triton" or "cuda". Head dims: any on the
            reference, up to 256 on cpu, 16/32/64/80/96/128 on triton, 64/80/96/128 on cuda.

    Returns:
        (B, Lq, Hq, d) contiguous, in q's dtype; softmax and accumulation in float32. A query
        row whose every visible key is masked returns zeros, never NaN. Non-finite data: a key
        hidden by ``key_padding_mask`` is never read, so whatever its K and V hold (NaN, inf,
        garbage in a padded cache slot) changes nothing; a NaN in what a query sees (its q, a
        visible key's K or V, the scale) makes its output NaN, as in torch. A key beyond a
        query's causal horizon (a later position of the suffix, not padding) leaves that
        query's row alone on the reference, cpu and cuda backends; on triton a non-finite V of
        such a key can still reach it through 0 * NaN (known gap, see README).
        Differentiable on the reference, cpu and cuda (backward through the reference math)
        and triton (Triton backward kernels) backends.
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
    # the output is contiguous (B, Lq, Hq, d): its last offset is q.numel() - 1
    max_offset = max(max_element_offset(q, k, v), q.numel() - 1)
    impl = _REG.select(backend, {"q": q, "k": k, "v": v}, head_dim=d, max_offset=max_offset)
    return impl.run(q, k, v, causal, key_padding_mask, softmax_scale)


def _fake(q, k, v, causal, key_padding_mask, scale):
    return q.new_empty(q.shape)


for _ns in _ext.op_namespaces():
    torch.library.register_fake(f"{_ns}::prefusion_attention")(_fake)
    torch.library.register_autograd(f"{_ns}::prefusion_attention", autograd_backward, setup_context=autograd_setup)
if _ext._C is not None:
    from torch.utils.flop_counter import register_flop_formula

    register_flop_formula(torch.ops.lmini.prefusion_attention)(attention_flops)
