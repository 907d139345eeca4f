"""The parameters of one query-based compressor, as one object (:class:`CompressWeights`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from lmini_kernels.checks import check_int, check_positive_float, check_same, check_tensor, square_side


@dataclass
class CompressWeights:
    """Everything :func:`lmini_kernels.compress` needs besides the features, in the official
    ``Resampler``'s terms (D = embed_dim, Q = number of queries, N = tokens per image).

    Attributes:
        query: (Q, D) learnable queries, Q = C*C.
        pos_q: (Q, D) the queries' 2D sin-cos table (:func:`lmini_kernels.get_2d_sincos_pos_embed`).
        pos_k: (N, D) the keys' table (:func:`lmini_kernels.compress_positions` of ``pos_q``).
        ln_q_weight, ln_q_bias: (D,) LayerNorm of the queries; ln_kv_weight, ln_kv_bias: (D,)
            LayerNorm of the features.
        in_proj_weight: (3D, D), in_proj_bias: (3D,): packed q/k/v projections.
        out_proj_weight: (D, D), out_proj_bias: (D,).
        num_heads: D must be a multiple of it.
        kv_proj_weight: optional (D, kv_dim) projection of the features, no bias.
        ln_q_eps, ln_kv_eps: the two LayerNorms' epsilons.

    ``pos_q`` and ``pos_k`` may be float64 (the tables' own dtype); every other tensor shares
    the features' dtype and device.
    """

    query: torch.Tensor
    pos_q: torch.Tensor
    pos_k: torch.Tensor
    ln_q_weight: torch.Tensor
    ln_q_bias: torch.Tensor
    ln_kv_weight: torch.Tensor
    ln_kv_bias: torch.Tensor
    in_proj_weight: torch.Tensor
    in_proj_bias: torch.Tensor
    out_proj_weight: torch.Tensor
    out_proj_bias: torch.Tensor
    num_heads: int
    kv_proj_weight: torch.Tensor | None = None
    ln_q_eps: float = 1e-5
    ln_kv_eps: float = 1e-5

    @property
    def embed_dim(self) -> int:
        return self.query.shape[1]

    @property
    def num_queries(self) -> int:
        return self.query.shape[0]

    def tensors(self) -> dict[str, torch.Tensor | None]:
        """Every tensor field by name (``kv_proj_weight`` may be None)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SCALARS}

    def map(self, fn) -> CompressWeights:
        """A copy with ``fn`` applied to every tensor (e.g. ``w.map(torch.Tensor.double)``)."""
        return CompressWeights(
            **{k: None if t is None else fn(t) for k, t in self.tensors().items()},
            **{k: getattr(self, k) for k in _SCALARS},
        )

    def check(self, x: torch.Tensor) -> None:
        """Raise a ValueError/TypeError naming the field when these weights cannot compress ``x``
        (B, N, kv_dim)."""
        check_tensor("x", x, ndim=3)
        h = check_int("num_heads", self.num_heads)
        for name in sorted(_SCALARS - {"num_heads"}):
            check_positive_float(name, getattr(self, name))
        n, kv_dim = x.shape[1], x.shape[2]
        square_side(n, "x.shape[1] (tokens per image)")
        check_tensor("query", self.query, ndim=2)
        nq, dim = self.query.shape
        square_side(nq, "query.shape[0] (number of queries)")
        if dim % h != 0:
            raise ValueError(f"query.shape[1] (embed_dim) = {dim} is not divisible by num_heads = {h}")
        check_tensor("pos_q", self.pos_q, shape=(nq, dim))
        check_tensor("pos_k", self.pos_k, shape=(n, dim))
        for name in ("ln_q_weight", "ln_q_bias", "ln_kv_weight", "ln_kv_bias", "out_proj_bias"):
            check_tensor(name, getattr(self, name), shape=(dim,))
        check_tensor("in_proj_weight", self.in_proj_weight, shape=(3 * dim, dim))
        check_tensor("in_proj_bias", self.in_proj_bias, shape=(3 * dim,))
        check_tensor("out_proj_weight", self.out_proj_weight, shape=(dim, dim))
        if self.kv_proj_weight is not None:
            check_tensor("kv_proj_weight", self.kv_proj_weight, shape=(dim, kv_dim))
        elif kv_dim != dim:
            raise ValueError(
                f"x.shape[2] = {kv_dim} differs from embed_dim = {dim}; pass kv_proj_weight ({dim}, {kv_dim})"
            )
        check_same([("x", x), *self.same_dtype_tensors()])
        check_same([("x", x), ("pos_q", self.pos_q), ("pos_k", self.pos_k)], dtype=False)

    def same_dtype_tensors(self) -> list[tuple[str, torch.Tensor | None]]:
        """The tensors that share the features' dtype (all but the position tables)."""
        return [(k, t) for k, t in self.tensors().items() if k not in ("pos_q", "pos_k")]

    @classmethod
    def from_module(cls, m: nn.Module, pos_k: torch.Tensor) -> CompressWeights:
        """The weights of an official-layout ``Resampler`` ``m`` (``query``, ``pos_embed``,
        ``ln_q``, ``ln_kv``, ``attn`` an ``nn.MultiheadAttention``, optional ``kv_proj``), with
        the key table ``pos_k`` for the features at hand. Shares the module's tensors."""
        a, kv = m.attn, getattr(m, "kv_proj", None)
        return cls(
            m.query, m.pos_embed, pos_k, m.ln_q.weight, m.ln_q.bias, m.ln_kv.weight, m.ln_kv.bias,
            a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias, a.num_heads,
            kv_proj_weight=kv.weight if isinstance(kv, nn.Linear) else None,
            ln_q_eps=m.ln_q.eps, ln_kv_eps=m.ln_kv.eps,
        )  # fmt: skip


_SCALARS = frozenset({"num_heads", "ln_q_eps", "ln_kv_eps"})
