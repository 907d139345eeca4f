"""FusedResampler: the query-resampler family (LLaVA-Mini, Qwen-VL, MiniCPM-V) on the fused
compression op."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
from torch import nn

from lmini_kernels.checks import check_int, check_positive_float, square_root
from lmini_kernels.ops.compress.api import choose_algorithm, compress
from lmini_kernels.ops.compress.folded import Folded, fold
from lmini_kernels.ops.compress.positions import compress_positions, get_2d_sincos_pos_embed
from lmini_kernels.ops.compress.weights import CompressWeights

#: The call conventions :class:`FusedResampler` reproduces (its ``layout``):
#: "llava_mini": LLaVA-Mini's ``Resampler``: ``forward(x, attn_mask=None, text=None)`` -> (out, attn);
#: "qwen_vl": Qwen-VL's ``Resampler`` (hub ``visual.py``): ``forward(x, attn_mask=None)`` -> out;
#: "resampler2": vLLM's ``Resampler2`` (Qwen-VL, MiniCPM-V 2.0): ``forward(x, tgt_sizes=None,
#: attn_mask=None)`` -> out, key positions resized (or, ``adaptive``, computed) for the (H, W) grid;
#: "minicpmv": MiniCPM-V 2.5 / 2.6 / o2.6 / 4.0 (hub ``resampler.py``, vLLM ``Resampler2_5``):
#: ``forward(x, tgt_sizes)`` -> out, no query positions, a (70, 70) key table sliced per image,
#: ragged images padded, ``ln_post`` + ``proj``.
LAYOUTS = ("llava_mini", "qwen_vl", "resampler2", "minicpmv")


class FusedResampler(nn.Module):
    """Drop-in for the query resamplers: learnable queries cross-attend to the features of each
    image (or video frame), all images in one launch of :func:`lmini_kernels.compress`.

    Parameters carry the sources' names (``query``, ``pos_embed``, ``kv_proj.weight`` when
    ``kv_dim`` differs from ``embed_dim``, ``attn.in_proj_weight``, ``attn.in_proj_bias``,
    ``attn.out_proj.*``, ``ln_q.*``, ``ln_kv.*``, and with the epilogue ``ln_post.*`` and
    ``proj``), so ``load_state_dict(source_state_dict, strict=True)`` works. ``attn`` is an
    ``nn.MultiheadAttention`` used only as the container of the packed projections. For
    ``layout="minicpmv"`` ``pos_embed`` is a non-persistent (H, W, D) buffer, as in MiniCPM-V.

    The parameter-only work (the folded query vectors, the key-position logits) is recomputed
    on every call by default, so the output always follows the parameters, however they were
    changed. :meth:`freeze` caches it for inference (one entry per key grid), keyed on every
    parameter's identity, storage and version counter: an optimizer step, a ``load_state_dict``
    or an in-place op under ``torch.no_grad()`` invalidates it. A write that bypasses the
    version counter (``p.data.mul_()``, ``p.data.copy_()``, writes through a NumPy view) cannot
    be seen; after one, call :meth:`refresh` (or do not freeze). While a graph is recorded
    (training) or compiled, the fold is always recomputed, so gradients reach every parameter.

    Args:
        grid_size: C for C*C queries with a C x C query table (ignored when ``num_queries`` is
            given: then there are no query positions).
        embed_dim, num_heads: D and the attention heads (D % heads == 0).
        kv_dim: the features' width when a ``kv_proj`` maps them to D.
        layout: one of :data:`LAYOUTS` (the call convention to reproduce).
        num_queries: any Q, for layouts without query positions ("minicpmv").
        eps: the LayerNorms' epsilon (LLaVA-Mini 1e-5; Qwen-VL and MiniCPM-V 1e-6); each
            norm's own ``eps`` attribute is what the op uses.
        post_projection: add ``ln_post`` and ``proj`` (D, D) (MiniCPM-V; "resampler2" with
            ``do_post_projection``).
        max_size: the (H, W) key table of "minicpmv" (grown on demand, as the source does).
        adaptive: "resampler2"'s adaptive key positions (a sin-cos table of the grid itself).
    """

    def __init__(
        self,
        grid_size: int,
        embed_dim: int,
        num_heads: int,
        kv_dim: int | None = None,
        *,
        layout: str = "llava_mini",
        num_queries: int | None = None,
        eps: float = 1e-5,
        post_projection: bool = False,
        max_size: tuple[int, int] = (70, 70),
        adaptive: bool = False,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        check_int("embed_dim", embed_dim)
        check_int("num_heads", num_heads)
        check_positive_float("eps", eps)
        if kv_dim is not None:
            check_int("kv_dim", kv_dim)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: {embed_dim} is not divisible by num_heads = {num_heads}")
        self.layout, self.adaptive = layout, bool(adaptive)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        if layout == "minicpmv":
            self.num_queries = check_int("num_queries", num_queries if num_queries is not None else grid_size)
            self.grid_size = None
            self.max_size = tuple(check_int("max_size", int(v)) for v in max_size)
            self.register_buffer("pos_embed", self._table(self.max_size), persistent=False)
        else:
            if num_queries is not None:
                raise ValueError(f"num_queries: layout {layout!r} has C*C queries with positions; pass grid_size")
            self.grid_size = check_int("grid_size", grid_size)
            self.num_queries = grid_size * grid_size
            table = get_2d_sincos_pos_embed(embed_dim, grid_size).float()
            self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.query = nn.Parameter(torch.empty(self.num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim not in (None, embed_dim) else None
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_post = nn.LayerNorm(embed_dim, eps=eps) if post_projection else None
        self.proj = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim)) if post_projection else None
        self._cache: dict[tuple, Folded] = {}
        self._frozen = False

    def _table(self, size: tuple[int, int]) -> torch.Tensor:
        return get_2d_sincos_pos_embed(self.embed_dim, size).float().view(size[0], size[1], self.embed_dim)

    # ------------------------------------------------------------------ building from a source
    @classmethod
    def from_module(cls, m: nn.Module, *, share: bool = False) -> FusedResampler:
        """A FusedResampler reproducing the resampler ``m`` (its layout found by structure, see
        :data:`LAYOUTS`): LLaVA-Mini's ``Resampler``, Qwen-VL's, vLLM's ``Resampler2`` and
        ``Resampler2_5``/``Resampler4_5`` (``kv_proj`` a ``ReplicatedLinear`` or a lambda), and
        MiniCPM-V's hub ``Resampler``. ``share`` makes the new module use ``m``'s own
        Parameter objects (training one trains the other; no memory), else they are copied. The
        LayerNorms' eps, the device and the dtype follow ``m``.

        Raises a TypeError naming the attribute when ``m`` is none of these."""
        layout = _layout_of(m)
        attn = _need(m, "attn", "an nn.MultiheadAttention")
        if not isinstance(attn, nn.MultiheadAttention):
            raise TypeError(f"{type(m).__name__}.attn: expected an nn.MultiheadAttention, got {type(attn).__name__}")
        query = _need(m, "query", "the (Q, D) learnable queries")
        for name in ("ln_q", "ln_kv"):
            if not isinstance(getattr(m, name, None), nn.LayerNorm):
                raise TypeError(f"{type(m).__name__}.{name}: expected an nn.LayerNorm")
        kv_w = getattr(getattr(m, "kv_proj", None), "weight", None)
        if kv_w is not None and getattr(m.kv_proj, "bias", None) is not None:
            raise TypeError(f"{type(m).__name__}.kv_proj: expected a projection without bias")
        proj = getattr(m, "proj", None)
        kw = dict(layout=layout, eps=m.ln_kv.eps, post_projection=proj is not None)
        kv_dim = None if kv_w is None else kv_w.shape[1]
        if layout == "minicpmv":
            kw.update(num_queries=query.shape[0], max_size=tuple(m.pos_embed.shape[:2]))
            grid = query.shape[0]
        else:
            grid = square_root(query.shape[0])
            if grid is None:
                raise TypeError(f"{type(m).__name__}.query: layout {layout!r} needs C*C queries, got {query.shape[0]}")
            kw.update(adaptive=bool(getattr(m, "adaptive", False)))
        with torch.device("meta"):
            new = cls(grid, attn.embed_dim, attn.num_heads, kv_dim, **kw)
        new.ln_q.eps, new.ln_kv.eps = m.ln_q.eps, m.ln_kv.eps
        if new.ln_post is not None:
            new.ln_post.eps = m.ln_post.eps
        new._adopt(m)
        return new if share else copy.deepcopy(new)

    def _adopt(self, m: nn.Module) -> None:
        """Take ``m``'s parameters (the same objects) in place of this module's meta tensors."""
        self.query = m.query
        self.attn = m.attn
        self.ln_q, self.ln_kv = m.ln_q, m.ln_kv
        if self.ln_post is not None:
            self.ln_post, self.proj = m.ln_post, m.proj
        if self.kv_proj is not None:
            self.kv_proj.weight = m.kv_proj.weight
        if self.layout == "minicpmv":
            self.pos_embed = m.pos_embed.detach().to(torch.float32)
        else:
            self.pos_embed = m.pos_embed
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if t.is_meta:
                raise TypeError(f"{type(m).__name__}: no source for the fused module's {name}")

    # ------------------------------------------------------------------ the cache
    def _params(self) -> list[torch.Tensor]:
        a = self.attn
        ps = [self.query, self.pos_embed, self.ln_q.weight, self.ln_q.bias, self.ln_kv.weight, self.ln_kv.bias,
              a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias]  # fmt: skip
        if self.kv_proj is not None:
            ps.append(self.kv_proj.weight)
        if self.ln_post is not None:
            ps += [self.ln_post.weight, self.ln_post.bias, self.proj]
        return ps

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

    def weights(self, pos_k: torch.Tensor) -> CompressWeights:
        """This module's parameters (shared, not copied) with the key positions ``pos_k``."""
        return CompressWeights.from_module(self, pos_k, query_positions=self.layout != "minicpmv")

    def _cached_fold(self, key: tuple, make_pos_k, kv_space: bool) -> Folded:
        """The fold for the key positions ``make_pos_k()`` (identified by ``key``; kept as
        ``.pos_k`` on the result, the resize is not free): cached when frozen and no graph is
        being recorded or compiled, recomputed otherwise."""
        params = self._params()
        if (
            not self._frozen
            or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and any(p.requires_grad for p in params))
        ):
            return self._fold(make_pos_k(), kv_space)
        full = (key, kv_space, self.ln_q.eps, self.ln_kv.eps) + tuple(
            (id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params
        )
        f = self._cache.get(full)
        if f is None:
            # Stale entries (old versions of the parameters) are dropped; one entry per grid stays.
            self._cache = {k: v for k, v in self._cache.items() if k[:2] != full[:2] and k[4:] == full[4:]}
            with torch.no_grad():
                f = self._cache[full] = self._fold(make_pos_k(), kv_space)
        return f

    def _fold(self, pos_k: torch.Tensor, kv_space: bool) -> Folded:
        f = fold(self.weights(pos_k), kv_space)
        f.pos_k = pos_k
        return f

    def folded(self, n: int) -> Folded:
        """The parameter-only tensors of the folded algorithm for N = ``n`` = G*G tokens (the
        "llava_mini" and "qwen_vl" layouts)."""
        return self._cached_fold(("grid", n), lambda: compress_positions(self.pos_embed, n), False)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args, need_weights: bool = False, backend: str = "auto",
                algorithm: str = "auto", **kwargs):  # fmt: skip
        """The source's call (see :data:`LAYOUTS`), plus keyword ``need_weights``, ``backend``
        and ``algorithm`` (as in :func:`lmini_kernels.compress`).

        - "llava_mini": ``(x, attn_mask=None, text=None)`` -> ``(out, attn)`` (attn None unless
          ``need_weights``); "qwen_vl": ``(x, attn_mask=None)`` -> out;
        - "resampler2": ``(x, tgt_sizes=None, attn_mask=None)`` -> out, ``tgt_sizes`` G, (H, W)
          or a (2,) tensor for the whole batch (None: a square grid);
        - "minicpmv": ``(x, tgt_sizes)`` -> out, ``tgt_sizes`` (B, 2) (H, W) per image, x (B,
          max H*W, kv_dim) padded after each image's tokens.

        ``attn_mask`` must be None (none of the models passes one; the fused op attends every
        token of an image, or the unpadded ones)."""
        params = _bind(self.layout, args, kwargs)
        if params.get("attn_mask") is not None:
            raise ValueError("attn_mask: FusedResampler supports only attn_mask=None (every query sees every token)")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a (B, N, kv_dim) tensor, got {shape}")
        kv_dim = x.shape[2] if self.kv_proj is not None else None
        algo = choose_algorithm(algorithm, self.num_queries, self.num_heads, self.embed_dim, x.device.type, kv_dim)
        foldable = algo != "projected" and x.dtype == self.query.dtype
        kw = dict(need_weights=need_weights, algorithm=algorithm, backend=backend)
        if self.layout == "minicpmv":
            out, attn = self._forward_minicpmv(x, params.get("tgt_sizes"), algo, foldable, kw)
        else:
            grid = self._key_grid(x, params.get("tgt_sizes"))

            def make_pos_k():
                if self.adaptive:
                    return get_2d_sincos_pos_embed(self.embed_dim, grid).to(x.device, torch.float32)
                return compress_positions(self.pos_embed, grid)

            folded = self._cached_fold(("grid", grid), make_pos_k, algo == "folded_kv") if foldable else None
            pos_k = folded.pos_k if folded is not None else make_pos_k()
            out, attn = compress(x, self.weights(pos_k), folded=folded, **kw)
        return (out, attn) if self.layout == "llava_mini" else out

    def _key_grid(self, x: torch.Tensor, tgt_sizes) -> tuple[int, int]:
        """The (H, W) key grid: ``tgt_sizes`` ("resampler2"), else the square grid of N tokens
        (always a pair: an int would read as the side G for the adaptive table)."""
        n = x.shape[1]
        if tgt_sizes is None or self.layout != "resampler2":
            side = square_root(n)
            if side is None:
                raise ValueError(f"x.shape[1] (tokens per image): expected a square number G*G, got {n}")
            return side, side
        hw = _pair(tgt_sizes)
        if hw[0] * hw[1] != n:
            raise ValueError(f"tgt_sizes: {hw[0]} x {hw[1]} = {hw[0] * hw[1]} tokens, but x has {n} per image")
        return hw

    def _forward_minicpmv(self, x, tgt_sizes, algo, foldable, kw):
        sizes = _sizes(tgt_sizes, x)
        lens = sizes[:, 0] * sizes[:, 1]
        n = x.shape[1]
        if int(lens.max()) > n:
            raise ValueError(f"tgt_sizes: an image of {int(lens.max())} tokens, but x holds {n} per image")
        max_h, max_w = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        if max_h > self.max_size[0] or max_w > self.max_size[1]:  # grown as the source does
            self.max_size = (max(max_h, self.max_size[0]), max(max_w, self.max_size[1]))
            self.pos_embed = self._table(self.max_size).to(self.pos_embed.device)
        # Frozen: the logits of the whole table, cached once. Else only the [:max_h, :max_w]
        # corner the batch uses (the position logits cost a GEMM over the table's rows).
        region = self.max_size if self._frozen else (max_h, max_w)
        table = self.pos_embed[: region[0], : region[1]].reshape(-1, self.embed_dim)
        j = torch.arange(n, device=x.device)
        w = sizes[:, 1:2].to(x.device)
        index = ((j // w) * region[1] + j % w).clamp(max=table.shape[0] - 1)
        lengths = lens.to(x.device)
        folded = self._cached_fold(("table", region), lambda: table, algo == "folded_kv") if foldable else None
        return compress(x, self.weights(table), lengths=lengths, pos_index=index, folded=folded, **kw)

    def extra_repr(self) -> str:
        extra = f", kv_proj, layout={self.layout!r}" if self.kv_proj is not None else f", layout={self.layout!r}"
        return f"num_queries={self.num_queries}, embed_dim={self.embed_dim}, num_heads={self.num_heads}" + extra


def _need(m: nn.Module, name: str, what: str):
    t = getattr(m, name, None)
    if t is None:
        raise TypeError(f"{type(m).__name__}.{name}: missing; a resampler has {what}")
    return t


def _layout_of(m: nn.Module) -> str:
    """The call convention of a resampler module, found by structure (never by import)."""
    if isinstance(m, FusedResampler):
        return m.layout
    pos = getattr(m, "pos_embed", None)
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"{type(m).__name__}.pos_embed: missing; a resampler has a position table")
    try:
        names = list(inspect.signature(m.forward).parameters)
    except (TypeError, ValueError):
        names = []
    if pos.dim() == 3 or hasattr(m, "max_size"):
        if getattr(m, "proj", None) is None or getattr(m, "ln_post", None) is None:
            raise TypeError(f"{type(m).__name__}.ln_post/proj: a MiniCPM-V resampler (3-D pos_embed) has both")
        return "minicpmv"
    if hasattr(m, "adaptive") or "tgt_sizes" in names:
        return "resampler2"
    if getattr(m, "proj", None) is not None:
        raise TypeError(f"{type(m).__name__}: ln_post/proj on a resampler without tgt_sizes: unknown layout")
    return "llava_mini" if "text" in names or not names or names == ["x"] else "qwen_vl"


_CALLS = {
    "llava_mini": ("attn_mask", "text"),
    "qwen_vl": ("attn_mask",),
    "resampler2": ("tgt_sizes", "attn_mask"),
    "minicpmv": ("tgt_sizes",),
}


def _bind(layout: str, args: tuple, kwargs: dict) -> dict:
    names = _CALLS[layout]
    if len(args) > len(names):
        raise TypeError(f"forward ({layout}): takes x and at most {len(names)} more arguments {names}")
    bound = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names or k in bound:
            raise TypeError(f"forward ({layout}): unexpected or repeated argument {k!r} (expected {names})")
        bound[k] = v
    return bound


def _pair(tgt_sizes) -> tuple[int, int]:
    if isinstance(tgt_sizes, int):
        return tgt_sizes, tgt_sizes
    t = torch.as_tensor(tgt_sizes).reshape(-1, 2) if not isinstance(tgt_sizes, Sequence) else None
    if t is not None:
        if not bool((t == t[0]).all()):
            raise ValueError(f"tgt_sizes: one (H, W) for the batch expected, got {t.tolist()}")
        return int(t[0, 0]), int(t[0, 1])
    if len(tgt_sizes) != 2:
        raise ValueError(f"tgt_sizes: expected G or (H, W), got {tgt_sizes!r}")
    return int(tgt_sizes[0]), int(tgt_sizes[1])


def _sizes(tgt_sizes, x: torch.Tensor) -> torch.Tensor:
    if tgt_sizes is None:
        side = square_root(x.shape[1])
        if side is None:
            raise ValueError(f"tgt_sizes: needed for {x.shape[1]} tokens per image (not a square grid)")
        return torch.full((x.shape[0], 2), side, dtype=torch.long)
    t = torch.as_tensor(tgt_sizes).to("cpu")
    if t.dtype.is_floating_point or tuple(t.shape) != (x.shape[0], 2):
        raise ValueError(f"tgt_sizes: expected ({x.shape[0]}, 2) integers (H, W per image), got {tuple(t.shape)}")
    if bool((t < 1).any()):
        raise ValueError(f"tgt_sizes: every H and W must be >= 1, got {t.tolist()}")
    return t.long()
