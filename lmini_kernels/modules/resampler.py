"""FusedResampler: the official LLaVA-Mini compressor with the fused compression op."""

from __future__ import annotations

import torch
from torch import nn

from lmini_kernels.checks import check_int, square_root
from lmini_kernels.ops.compress.api import compress
from lmini_kernels.ops.compress.folded import Folded, fold
from lmini_kernels.ops.compress.positions import compress_positions, get_2d_sincos_pos_embed
from lmini_kernels.ops.compress.weights import CompressWeights


class FusedResampler(nn.Module):
    """Drop-in for the official ``Resampler``: C*C learnable queries cross-attend to the
    features of each image (or video frame), all images in one launch.

    Parameters carry the official names (``query``, ``pos_embed``, ``kv_proj.weight`` when
    ``kv_dim`` differs from ``embed_dim``, ``attn.in_proj_weight``, ``attn.in_proj_bias``,
    ``attn.out_proj.weight``, ``attn.out_proj.bias``, ``ln_q.*``, ``ln_kv.*``), so
    ``load_state_dict(official_state_dict, strict=True)`` works. ``attn`` is an
    ``nn.MultiheadAttention`` used only as the container of the packed projections.

    The parameter-only work (the folded query vectors, the key-position logits for each N) is
    recomputed on every call by default, so the output always follows the parameters, however
    they were changed. :meth:`freeze` caches it for inference (one entry per N), keyed on every
    parameter's identity, storage and version counter: an optimizer step, a ``load_state_dict``
    or an in-place op under ``torch.no_grad()`` invalidates it. A write that bypasses the
    version counter (``p.data.mul_()``, ``p.data.copy_()``, writes through a NumPy view) cannot
    be seen; after one, call :meth:`refresh` (or do not freeze). While a graph is recorded
    (training) or compiled, the fold is always recomputed, so gradients reach every parameter.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        check_int("grid_size", grid_size)
        check_int("embed_dim", embed_dim)
        check_int("num_heads", num_heads)
        if kv_dim is not None:
            check_int("kv_dim", kv_dim)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: {embed_dim} is not divisible by num_heads = {num_heads}")
        self.grid_size, self.embed_dim, self.num_heads = grid_size, embed_dim, num_heads
        self.num_queries = grid_size * grid_size
        table = get_2d_sincos_pos_embed(embed_dim, grid_size).float()
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.query = nn.Parameter(torch.empty(self.num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim not in (None, embed_dim) else None
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim)
        self.ln_kv = nn.LayerNorm(embed_dim)
        self._cache: dict[tuple, Folded] = {}
        self._frozen = False

    @classmethod
    def from_module(cls, m: nn.Module) -> FusedResampler:
        """A FusedResampler with the parameters (copied), device, dtype and LayerNorm eps of an
        official-layout ``Resampler`` ``m``."""
        attn = m.attn
        kv = getattr(m, "kv_proj", None)
        kv_dim = kv.weight.shape[1] if isinstance(kv, nn.Linear) else None
        grid = getattr(m, "grid_size", None) or int(round(m.query.shape[0] ** 0.5))
        ref = m.query
        new = cls(grid, attn.embed_dim, attn.num_heads, kv_dim).to(device=ref.device, dtype=ref.dtype)
        new.ln_q.eps, new.ln_kv.eps = m.ln_q.eps, m.ln_kv.eps
        new.load_state_dict(m.state_dict(), strict=True)
        return new

    def weights(self, pos_k: torch.Tensor) -> CompressWeights:
        """This module's parameters (shared, not copied) with the key table ``pos_k``."""
        return CompressWeights.from_module(self, pos_k)

    def _params(self) -> list[torch.Tensor]:
        a = self.attn
        return [self.query, self.pos_embed, self.ln_q.weight, self.ln_q.bias, self.ln_kv.weight, self.ln_kv.bias,
                a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias]  # fmt: skip

    def _fold(self, n: int) -> Folded:
        pos_k = compress_positions(self.pos_embed, n)
        f = fold(self.weights(pos_k))
        f.pos_k = pos_k
        return f

    def freeze(self) -> FusedResampler:
        """Cache the parameter-only work for inference (see the class docstring for what
        invalidates it and what cannot be seen). Returns ``self``."""
        self._frozen = True
        self._cache = {}
        return self

    def unfreeze(self) -> FusedResampler:
        """Back to recomputing the parameter-only work on every call; drops the cache."""
        self._frozen = False
        self._cache = {}
        return self

    def refresh(self) -> FusedResampler:
        """Drop the cache (after a parameter write that bypasses the version counter)."""
        self._cache = {}
        return self

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` is in effect."""
        return self._frozen

    def folded(self, n: int) -> Folded:
        """The parameter-only tensors of the folded algorithm for N = ``n`` tokens: cached when
        :meth:`freeze` is in effect and no graph is being recorded (training) or compiled,
        recomputed otherwise."""
        params = self._params()
        if (
            not self._frozen
            or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and any(p.requires_grad for p in params))
        ):
            return self._fold(n)
        key = (n, self.ln_q.eps, self.ln_kv.eps) + tuple(
            (id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params
        )
        f = self._cache.get(key)
        if f is None:
            # Stale entries (old versions of the parameters) are dropped; one entry per N stays.
            self._cache = {k: v for k, v in self._cache.items() if k[0] != n and k[3:] == key[3:]}
            with torch.no_grad():
                f = self._cache[key] = self._fold(n)
        return f

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        text: object = None,
        *,
        need_weights: bool = False,
        backend: str = "auto",
        algorithm: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compress x (B, N, kv_dim or embed_dim), N = G*G for any G, to (B, C*C, embed_dim).

        Returns ``(out, attn)``: ``attn`` the head-averaged attention weights (B, C*C, N) when
        ``need_weights``, else None. ``attn_mask`` is not supported (the official model never
        passes one) and ``text`` is accepted and ignored, as in the official forward.
        ``backend`` and ``algorithm`` as in :func:`lmini_kernels.compress`.
        """
        if attn_mask is not None:
            raise ValueError("attn_mask: FusedResampler supports only attn_mask=None (every query sees every token)")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a (B, N, kv_dim) tensor, got {shape}")
        n = x.shape[1]
        square = square_root(n) is not None  # else compress() refuses x, naming the token count
        folded = self.folded(n) if square and x.dtype == self.query.dtype else None
        if folded is not None:
            pos_k = folded.pos_k  # cached with the fold (the bicubic resize is not free)
        else:
            pos_k = compress_positions(self.pos_embed, n) if square else self.pos_embed[:0]
        return compress(
            x, self.weights(pos_k), need_weights=need_weights, algorithm=algorithm, backend=backend, folded=folded
        )

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, embed_dim={self.embed_dim}, num_heads={self.num_heads}"
