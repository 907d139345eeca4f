"""The parameters of one query-based compressor, as one object (:class:`CompressWeights`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from lmini_kernels.checks import check_int, check_positive_float, check_same, check_tensor


@dataclass
class CompressWeights:
    """Everything :func:`lmini_kernels.compress` needs besides the features, in the official
    ``Resampler``'s terms (D = embed_dim, Q = number of queries, N = tokens per image). One
    object for every member of the query-resampler family (LLaVA-Mini, Qwen-VL, MiniCPM-V).

    Attributes:
        query: (Q, D) learnable queries, any Q.
        pos_q: (Q, D) the queries' position table (LLaVA-Mini, Qwen-VL, MiniCPM-V 2.0), or None
            (MiniCPM-V 2.5 and later add none).
        pos_k: the keys' positions: (N, D) shared by the batch (LLaVA-Mini:
            :func:`lmini_kernels.compress_positions` of ``pos_q``), (B, N, D) per image, or a
            (T, D) table that ``compress(..., pos_index=)`` indexes per token (MiniCPM-V's
            70 x 70 table sliced per image).
        ln_q_weight, ln_q_bias: (D,) LayerNorm of the queries; ln_kv_weight, ln_kv_bias: (D,)
            LayerNorm of the features.
        in_proj_weight: (3D, D), in_proj_bias: (3D,): packed q/k/v projections.
        out_proj_weight: (D, D), out_proj_bias: (D,).
        num_heads: D must be a multiple of it.
        kv_proj_weight: optional (D, kv_dim) projection of the features, no bias.
        ln_q_eps, ln_kv_eps: the two LayerNorms' epsilons.
        ln_post_weight, ln_post_bias, ln_post_eps, proj: the optional epilogue of MiniCPM-V
            (``out = LayerNorm_post(out) @ proj``, proj (D, D_out)); all None without one.

    ``pos_q`` and ``pos_k`` may be float64 (the tables' own dtype); every other tensor shares
    the features' dtype and device.
    """

    query: torch.Tensor
    pos_q: torch.Tensor | None
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
    ln_post_weight: torch.Tensor | None = None
    ln_post_bias: torch.Tensor | None = None
    ln_post_eps: float = 1e-5
    proj: torch.Tensor | None = None

    @property
    def embed_dim(self) -> int:
        return self.query.shape[1]

    @property
    def out_dim(self) -> int:
        """The width of the output: D_out with the ``proj`` epilogue, else D."""
        return self.embed_dim if self.proj is None else self.proj.shape[1]

    @property
    def has_epilogue(self) -> bool:
        return self.proj is not None

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

    def check(self, x: torch.Tensor, pos_index: torch.Tensor | None = None) -> None:
        """Raise a ValueError/TypeError naming the field when these weights cannot compress ``x``
        (B, N, kv_dim), with ``pos_index`` (B, N) the rows of a ``pos_k`` table when given."""
        check_tensor("x", x, ndim=3)
        h = check_int("num_heads", self.num_heads)
        for name in sorted(_SCALARS - {"num_heads"}):
            check_positive_float(name, getattr(self, name))
        batch, n, kv_dim = x.shape
        check_tensor("query", self.query, ndim=2)
        nq, dim = self.query.shape
        if nq < 1:
            raise ValueError(f"query: expected at least one query, got shape {tuple(self.query.shape)}")
        if n < 1:
            raise ValueError(f"x: expected at least one token per image, got shape {tuple(x.shape)}")
        if dim % h != 0:
            raise ValueError(f"query.shape[1] (embed_dim) = {dim} is not divisible by num_heads = {h}")
        if self.pos_q is not None:
            check_tensor("pos_q", self.pos_q, shape=(nq, dim))
        if pos_index is not None:
            check_tensor("pos_k", self.pos_k, ndim=2)
            check_tensor("pos_k", self.pos_k, shape=(None, dim))
        elif isinstance(self.pos_k, torch.Tensor) and self.pos_k.dim() == 3:
            check_tensor("pos_k", self.pos_k, shape=(batch, n, dim))
        else:
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
        post = {k: getattr(self, k) for k in ("ln_post_weight", "ln_post_bias", "proj")}
        if any(t is not None for t in post.values()):
            missing = [k for k, t in post.items() if t is None]
            if missing:
                raise ValueError(f"{', '.join(missing)}: the epilogue needs ln_post_weight, ln_post_bias and proj")
            check_tensor("ln_post_weight", self.ln_post_weight, shape=(dim,))
            check_tensor("ln_post_bias", self.ln_post_bias, shape=(dim,))
            check_tensor("proj", self.proj, shape=(dim, None))
        check_same([("x", x), *self.same_dtype_tensors()])
        check_same([("x", x), ("pos_q", self.pos_q), ("pos_k", self.pos_k)], dtype=False)

    def same_dtype_tensors(self) -> list[tuple[str, torch.Tensor | None]]:
        """The tensors that share the features' dtype (all but the position tables)."""
        return [(k, t) for k, t in self.tensors().items() if k not in ("pos_q", "pos_k")]

    @classmethod
    def from_module(cls, m: nn.Module, pos_k: torch.Tensor, *, query_positions: bool = True) -> CompressWeights:
        """The weights of a resampler-family module ``m`` (``query``, ``ln_q``, ``ln_kv``, ``attn``
        an ``nn.MultiheadAttention``, optional ``kv_proj`` with a bias-free (D, kv_dim)
        ``weight``, optional ``pos_embed``, optional ``ln_post`` + ``proj``), with the key
        positions ``pos_k`` for the features at hand. ``m.pos_embed`` is the queries' table when
        ``query_positions`` and it is (Q, D) (LLaVA-Mini, Qwen-VL); MiniCPM-V 2.5+ passes False.
        Shares the module's tensors."""
        a, kv = m.attn, getattr(m, "kv_proj", None)
        kv_w = getattr(kv, "weight", None)
        if kv_w is not None and getattr(kv, "bias", None) is not None:
            raise ValueError("kv_proj: a bias-free projection is expected (every resampler member has none)")
        pos_q = m.pos_embed if query_positions else None
        ln_post = getattr(m, "ln_post", None)
        proj = getattr(m, "proj", None)
        return cls(
            m.query, pos_q, pos_k, m.ln_q.weight, m.ln_q.bias, m.ln_kv.weight, m.ln_kv.bias,
            a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias, a.num_heads,
            kv_proj_weight=kv_w, ln_q_eps=m.ln_q.eps, ln_kv_eps=m.ln_kv.eps,
            ln_post_weight=None if ln_post is None else ln_post.weight,
            ln_post_bias=None if ln_post is None else ln_post.bias,
            ln_post_eps=1e-5 if ln_post is None else ln_post.eps,
            proj=proj,
        )  # fmt: skip


_SCALARS = frozenset({"num_heads", "ln_q_eps", "ln_kv_eps", "ln_post_eps"})
