"""Stand-ins of the query-resampler family's modules, written for these tests from reading the
sources (not copied): the attribute names, parameter shapes, position tables and forward math
of

- MiniCPM-V 2.5 / 2.6's hub remote code ``resampler.py`` (``Resampler``): :class:`HubMiniCPMVResampler`;
- vLLM ``model_executor/models/minicpmv.py`` ``Resampler2_5``: :class:`VllmResampler2_5`;
- vLLM ``model_executor/layers/resampler.py`` ``Resampler2`` (Qwen-VL, MiniCPM-V 2.0):
  :class:`VllmResampler2`, over :class:`VllmBaseResampler` and a stand-in :class:`ReplicatedLinear`;
- Qwen-VL's hub ``visual.py`` ``Resampler``: :class:`QwenVLResampler`.

Every one runs ``nn.MultiheadAttention`` in the sources' (L, B, D) convention with eps 1e-6
LayerNorms, and builds its own sin-cos tables in NumPy float32 as the sources do (MAE's
formulas: ``omega_k = 1 / 10000^(k / (d/2))``, ``[sin(p omega), cos(p omega)]``, the first
half of the channels from the column coordinate, the second from the row). Nothing here
imports lmini_kernels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(*pos.shape, dim) float32: sin then cos of pos * omega, omega_k = 10000^(-k/(dim/2))."""
    assert dim % 2 == 0
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float32) / np.float32(dim / 2.0))
    angles = pos[..., None].astype(np.float32) * omega.astype(np.float32)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def sincos_2d(dim: int, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W, dim) float32 table (the sources' "version 2.5" layout; ``reshape(H*W, dim)`` is
    their "version 2.0" one): channels [0, dim/2) from the column index, the rest from the row."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))  # (H, W) each
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=-1)


def resize_positions(table: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The sources' ``get_abs_pos``: the (C*C, D) table bicubically resized (align_corners
    False, in float32, cast back) to an (H, W) grid, flattened row-major; unchanged when equal."""
    src = int(math.sqrt(table.shape[0]))
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if src == h and src == w:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(h * w, -1).to(table.dtype)


def _init_(m: nn.Module) -> None:
    """The sources' ``_init_weights``: truncated-normal linears, unit LayerNorms."""
    for sub in m.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def _queries(q: torch.Tensor, copies: int) -> torch.Tensor:
    """(Q, D) -> (Q, copies, D): one copy of the queries per image (the sources' ``_repeat``)."""
    return q.unsqueeze(1).expand(-1, copies, -1)


def _padded_positions(table: torch.Tensor, tgt_sizes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(max H*W, B, D): image b takes ``table[:h_b, :w_b]`` flattened, zeros after it."""
    rows = [table[: int(h), : int(w)].reshape(int(h) * int(w), -1).to(dtype) for h, w in tgt_sizes.tolist()]
    return nn.utils.rnn.pad_sequence(rows, batch_first=False, padding_value=0.0)


def _padding_mask(tgt_sizes: torch.Tensor, device) -> torch.Tensor:
    """(B, max H*W) bool, True past each image's H*W tokens (nn.MultiheadAttention's convention)."""
    lens = (tgt_sizes[:, 0] * tgt_sizes[:, 1]).to(device)
    return torch.arange(int(lens.max()), device=device).unsqueeze(0) >= lens.unsqueeze(1)


class _TableCache:
    """The MiniCPM-V modules' (H, W, D) ``pos_embed`` buffer (non-persistent, float32), rebuilt
    larger when an image exceeds ``max_size``."""

    def _set_2d_pos_cache(self, max_size, device="cpu"):
        table = torch.from_numpy(sincos_2d(self.embed_dim, max_size)).float().to(device)
        self.register_buffer("pos_embed", table, persistent=False)

    def _adjust_pos_cache(self, tgt_sizes, device):
        max_h, max_w = int(tgt_sizes[:, 0].max()), int(tgt_sizes[:, 1].max())
        if max_h > self.max_size[0] or max_w > self.max_size[1]:
            self.max_size = (max(max_h, self.max_size[0]), max(max_w, self.max_size[1]))
            self._set_2d_pos_cache(self.max_size, device)


class HubMiniCPMVResampler(_TableCache, nn.Module):
    """MiniCPM-V 2.5 / 2.6 hub ``Resampler``: ``kv_proj`` an ``nn.Linear`` (no bias) or
    ``nn.Identity``, a non-persistent (H, W, D) ``pos_embed`` buffer grown on demand, no query
    positions, ``ln_post`` then ``@ proj``; ``forward(x, tgt_sizes)`` with x (B, max H*W, kv)."""

    def __init__(self, num_queries, embed_dim, num_heads, kv_dim=None, adaptive=False, max_size=(70, 70)):
        super().__init__()
        self.num_queries, self.embed_dim, self.num_heads = num_queries, embed_dim, num_heads
        self.adaptive, self.max_size = adaptive, max_size
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim not in (None, embed_dim) else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_post = nn.LayerNorm(embed_dim, eps=EPS)
        self.proj = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim))
        self._set_2d_pos_cache(max_size)
        _init_(self)

    def forward(self, x, tgt_sizes=None):
        assert x.shape[0] == tgt_sizes.shape[0]
        self._adjust_pos_cache(tgt_sizes, x.device)
        mask = _padding_mask(tgt_sizes, x.device)
        pos = _padded_positions(self.pos_embed, tgt_sizes, x.dtype)
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # (L, B, D)
        q = self.ln_q(self.query)
        out = self.attn(_queries(q, x.shape[0]), kv + pos, kv, key_padding_mask=mask)[0]  # (Q, B, D)
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj


class ReplicatedLinear(nn.Module):
    """vLLM's ``ReplicatedLinear`` as the resamplers use it: a (out, in) ``weight``, ``bias``
    None (registered), ``forward`` returns ``(output, output_bias)`` with output_bias None."""

    def __init__(self, input_size, output_size, bias=False):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias), None


class VllmBaseResampler(nn.Module):
    """vLLM's ``BaseResampler``: ``kv_proj`` a ReplicatedLinear, or (kv_dim None or equal to D)
    a plain function returning ``(x, None)`` (not a module); optional ``ln_post`` + ``proj``."""

    def __init__(self, num_queries, embed_dim, num_heads, kv_dim=None, do_post_projection=True):
        super().__init__()
        self.num_queries, self.embed_dim, self.num_heads = num_queries, embed_dim, num_heads
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        if kv_dim is not None and kv_dim != embed_dim:
            self.kv_proj = ReplicatedLinear(kv_dim, embed_dim, bias=False)
        else:
            self.kv_proj = lambda *args, **kwargs: (nn.Identity()(*args, **kwargs), None)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=EPS)
        self.do_post_projection = do_post_projection
        self.ln_post = nn.LayerNorm(embed_dim, eps=EPS) if do_post_projection else None
        self.proj = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim)) if do_post_projection else None


class VllmResampler2(VllmBaseResampler):
    """vLLM's ``Resampler2`` (Qwen-VL with ``do_post_projection=False``, MiniCPM-V 2.0 with it):
    C*C queries with the (C*C, D) ``pos_embed`` Parameter (no grad); the keys' positions resized
    from it to ``tgt_sizes`` (an int G, an (H, W) pair or None: a square grid) or, ``adaptive``,
    the sin-cos table of that grid itself."""

    def __init__(self, grid_size, embed_dim, num_heads, kv_dim=None, adaptive=False, do_post_projection=True):
        super().__init__(grid_size**2, embed_dim, num_heads, kv_dim, do_post_projection)
        self.adaptive = adaptive
        table = sincos_2d(embed_dim, grid_size).reshape(grid_size**2, embed_dim)
        self.pos_embed = nn.Parameter(torch.from_numpy(table).requires_grad_(False))
        _init_(self)

    def forward(self, x, tgt_sizes=None, attn_mask=None):
        if tgt_sizes is None:
            tgt_sizes = int(math.sqrt(x.size(1)))
        if self.adaptive:
            hw = (tgt_sizes, tgt_sizes) if isinstance(tgt_sizes, int) else tgt_sizes
            table = sincos_2d(self.embed_dim, hw).reshape(-1, self.embed_dim)
            pos = torch.from_numpy(table).to(device=x.device, dtype=x.dtype)
        else:
            pos = resize_positions(self.pos_embed, tgt_sizes).to(device=x.device, dtype=x.dtype)
        kv, _ = self.kv_proj(x)
        kv = self.ln_kv(kv).permute(1, 0, 2)  # (N, B, D)
        q = self.ln_q(self.query)
        out = self.attn(_queries(q, kv.shape[1]) + self.pos_embed.unsqueeze(1), kv + pos.unsqueeze(1), kv,
                        attn_mask=attn_mask)[0]  # fmt: skip
        out = out.permute(1, 0, 2)
        if self.do_post_projection:
            out = self.ln_post(out) @ self.proj
        return out


class VllmResampler2_5(_TableCache, VllmBaseResampler):
    """vLLM's ``Resampler2_5`` (MiniCPM-V 2.5 / 2.6 / 4.0): the hub module's math over the
    vLLM base (ReplicatedLinear or function ``kv_proj``), ``forward(x, tgt_sizes)``."""

    def __init__(self, num_queries, embed_dim, num_heads, kv_dim=None, max_size=(70, 70)):
        super().__init__(num_queries, embed_dim, num_heads, kv_dim, do_post_projection=True)
        self.max_size = max_size
        self._set_2d_pos_cache(max_size)

    def forward(self, x, tgt_sizes):
        assert x.shape[0] == tgt_sizes.shape[0]
        self._adjust_pos_cache(tgt_sizes, x.device)
        mask = _padding_mask(tgt_sizes, x.device)
        pos = _padded_positions(self.pos_embed, tgt_sizes, x.dtype)
        kv, _ = self.kv_proj(x)
        kv = self.ln_kv(kv).permute(1, 0, 2)
        q = self.ln_q(self.query)
        out = self.attn(_queries(q, x.shape[0]), kv + pos, kv, key_padding_mask=mask)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj


class QwenVLResampler(nn.Module):
    """Qwen-VL's hub ``Resampler`` (``visual.py``): C*C queries with the (C*C, D) ``pos_embed``
    Parameter (no grad), keys' positions resized to the square grid of N, ``kv_proj`` Linear or
    Identity, no epilogue; ``forward(x, attn_mask=None)`` -> (B, C*C, D)."""

    def __init__(self, grid_size, embed_dim, num_heads, kv_dim=None):
        super().__init__()
        self.num_queries, self.embed_dim, self.num_heads = grid_size**2, embed_dim, num_heads
        table = sincos_2d(embed_dim, grid_size).reshape(grid_size**2, embed_dim)
        self.pos_embed = nn.Parameter(torch.from_numpy(table).float()).requires_grad_(False)
        self.query = nn.Parameter(torch.zeros(self.num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim not in (None, embed_dim) else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=EPS)
        _init_(self)

    def forward(self, x, attn_mask=None):
        pos = resize_positions(self.pos_embed, int(math.sqrt(x.size(1))))
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)
        q = self.ln_q(self.query)
        out = self.attn(_queries(q, kv.shape[1]) + self.pos_embed.unsqueeze(1), kv + pos.unsqueeze(1), kv,
                        attn_mask=attn_mask)[0]  # fmt: skip
        return out.permute(1, 0, 2)


def perturb_(m: nn.Module, seed: int | None = None) -> nn.Module:
    """Move every trainable parameter away from its init (unit LayerNorms, zero biases), so that
    each one changes the output; the position tables are left as built. Returns ``m``."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "pos_embed":
                continue
            scale = 0.3 if p.dim() == 1 else p.shape[-1] ** -0.5
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale)
    return m
