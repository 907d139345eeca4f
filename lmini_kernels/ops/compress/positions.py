"""The compressor's fixed 2D sin-cos position tables (MAE convention, as the official code)."""

from __future__ import annotations

import functools
import math

import torch

from lmini_kernels.checks import square_side


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M, dim): [sin(pos * w_k)]_k ++ [cos(pos * w_k)]_k with w_k = 10000^(-k / (dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).to(torch.float64) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int]) -> torch.Tensor:
    """The (H*W, embed_dim) float64 table for an H x W grid (``grid_size`` G means G x G),
    position p = row * W + col.

    The first embed_dim/2 channels encode the column, the last embed_dim/2 the row; each half
    is [sin(pos * w_k)] ++ [cos(pos * w_k)], k < embed_dim/4, w_k = 10000^(-k / (embed_dim/4)).
    ``embed_dim`` must be a multiple of 4. (MiniCPM-V's (H, W, D) "version 2.5" table holds the
    same numbers: ``table.view(H, W, D)``.)
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim: the 2D sin-cos table needs a multiple of 4, got {embed_dim}")
    h, w = _grid(grid_size, "grid_size")
    row, col = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    emb_col = _sincos_1d(embed_dim // 2, col.reshape(-1))
    emb_row = _sincos_1d(embed_dim // 2, row.reshape(-1))
    return torch.cat([emb_col, emb_row], dim=1)


def _grid(size: object, name: str) -> tuple[int, int]:
    """(H, W) of a grid given as G or (H, W), each >= 1, else a ValueError naming ``name``."""
    hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"{name}: expected a side G >= 1 or (H, W) with H, W >= 1, got {size!r}")
    return int(hw[0]), int(hw[1])


@functools.lru_cache(maxsize=64)
def _bicubic_weights(src: int, tgt: int) -> tuple[tuple[float, ...], ...]:
    """(tgt x src) 1-D weights of PyTorch's bicubic resize (``upsample_bicubic2d``,
    align_corners=False: source x = (i + 0.5) * src / tgt - 0.5, the cubic convolution kernel
    with A = -0.75, taps clamped to the border) from ``src`` to ``tgt`` samples. Plain Python
    floats: they depend on the sizes only, so the cache is safe under fake tensors, meta
    devices and torch.compile (no tensor is cached)."""
    a = -0.75

    def near(t: float) -> float:  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t: float) -> float:  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    rows = []
    for i in range(tgt):
        x = (i + 0.5) * src / tgt - 0.5
        x0 = math.floor(x)
        t = x - x0
        row = [0.0] * src
        for k, w in zip(range(x0 - 1, x0 + 3), (far(t + 1), near(t), near(1 - t), far(2 - t)), strict=True):
            row[min(max(k, 0), src - 1)] += w
        rows.append(tuple(row))
    return tuple(rows)


def compress_positions(pos_embed: torch.Tensor, n: int | tuple[int, int]) -> torch.Tensor:
    """The key position table for ``n`` = G*G tokens (or an (H, W) grid), as the official
    ``get_abs_pos`` (LLaVA-Mini, Qwen-VL, MiniCPM-V 2.0).

    ``pos_embed`` (C*C, D) is the queries' table; when the grid differs from C x C it is
    bicubically interpolated (align_corners=False) to it, in float32, then cast back to
    ``pos_embed``'s dtype. Returns (H*W, D), row-major. The resize is separable, so it runs as
    two small matmuls with the 1-D weights of PyTorch's bicubic kernel (:func:`_bicubic_weights`;
    within 4e-7 of F.interpolate, 10-15x faster than ``upsample_bicubic2d`` on CPU at D = 1024,
    which made the table most of a B = 1 call).
    """
    src = square_side(pos_embed.shape[0], "pos_embed rows")
    if isinstance(n, int):
        tgt_h = tgt_w = square_side(n, "n")
    else:
        tgt_h, tgt_w = _grid(n, "n")
    if src == tgt_h == tgt_w:
        return pos_embed
    wh = torch.tensor(_bicubic_weights(src, tgt_h), dtype=torch.float32, device=pos_embed.device)
    ww = wh if tgt_w == tgt_h else torch.tensor(_bicubic_weights(src, tgt_w), dtype=torch.float32,
                                                 device=pos_embed.device)  # fmt: skip
    grid = pos_embed.float().reshape(src, src, -1)
    rows = torch.matmul(wh, grid.reshape(src, -1)).reshape(tgt_h, src, -1)  # resize along y: (H, src, D)
    out = torch.matmul(ww, rows)  # then along x, row by row: (H, W, D)
    return out.reshape(tgt_h * tgt_w, -1).to(pos_embed.dtype)
