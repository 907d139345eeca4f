"""Triton core of the folded compression (see lmini_kernels/ops/compress/core.py for the math).

Grid (B * splits, cdiv(K, KT)): one program per (image, chunk of tokens, tile of KT folded rows).
A program walks its tokens in tiles of BLOCK_N rows held whole in registers (BLOCK_D >= D):
LayerNorm statistics per row, scores = y @ a_tile^T (BLOCK_N x KT), one online-softmax rescale
per tile, acc += w^T @ y. Both products are broadcast multiplies reduced in fp32 on CUDA cores:
tl.dot's IEEE fp32 path spilled 20 KB a thread at D = 1024 (ptxas, sm_90) and TF32 breaks the
1e-5 bound. KT = 8 is LLaVA-Mini's K (C = 1, 8 heads): no padded rows. When a batch has too
few images to fill the GPU the tokens are split and the
chunks' (max, sum, acc) states are merged after the kernel (a few small torch ops).
Bytes: x read once (B*N*D*itemsize) per K tile (one tile for K <= 8), acc written once
(B*K*D*4); FLOPs ~4*B*N*KT*D. Accumulation in fp32 whatever x's dtype; x is upcast at load
(which also keeps the interpreter exact: it computes bf16 on raw bits).

Backward (``compress_folded_bwd_kernel``, op ``lmini::compress_folded_triton_bwd``): grid
(B * splits,), one program per (image, chunk of tokens) holding all K <= KT_BWD_MAX folded rows
(a, the incoming gradient G and the partial da in registers). Per token tile it recomputes y and
the probabilities from the saved lse, forms ds_kj = prob_kj (y_j . G_k - c_k) with
c_k = acc_k . G_k - g_lse_k (computed before the launch), writes ds (= the per-image dp, summed
over images after the kernel), adds ds^T y into da, and writes dx through the LayerNorm backward.
x and G are read once, dx written once. Beyond its register tile (see ``triton_bwd_fits``: K <= 8
at D <= 1024, K <= 16 at D <= 512; LLaVA-Mini's K = 8, D = 1024 fits, and the GPU's auto choice
takes the projected path past 16 rows) the analytic PyTorch backward runs instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmini_kernels.checks import check_grid
from lmini_kernels.env import triton_interpret
from lmini_kernels.outputs import new_output
from lmini_kernels.triton_aot import AotSpec

#: TRITON_INTERPRET when these kernels were decorated (Triton fixes their mode then);
#: checked before every launch by :func:`lmini_kernels.backends.triton_launch`.
INTERPRETED = triton_interpret()

KT = 8
BLOCK_N = 4
KT_BWD_MAX = 16
# The backward holds a, G and da (KT x BLOCK_D each) in registers: one token per step, and at
# most 8192 such elements (K = 8 at D = 1024, K = 16 at D = 512); ptxas: no spills on sm_80/90.
BLOCK_N_BWD = 1
BWD_MAX_TILE = 8192


@triton.jit
def compress_folded_fwd_kernel(
    # pointers
    x_ptr, a_ptr, p_ptr, acc_ptr, lse_ptr, part_ptr,
    # sizes and strides (elements)
    N, D, K, stride_xb, stride_xn, chunk, splits, eps,
    # meta
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KT: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kt = tl.program_id(1)
    b = (pid // splits).to(tl.int64)  # int64: b * stride_xb passes 2^31 for big batches
    sp = pid % splits
    n0 = sp * chunk
    n1 = tl.minimum(N, n0 + chunk)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_k = kt * KT + tl.arange(0, KT)
    mask_k = offs_k < K
    a = tl.load(a_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_k[:, None] & mask_d[None, :], other=0.0)
    m = tl.full([KT], float("-inf"), tl.float32)
    l = tl.zeros([KT], tl.float32)
    acc = tl.zeros([KT, BLOCK_D], tl.float32)
    x_img = x_ptr + b * stride_xb
    for j0 in range(n0, n1, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n1
        xt = tl.load(
            x_img + offs_n[:, None].to(tl.int64) * stride_xn + offs_d[None, :],
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)
        mean = tl.sum(xt, axis=1) / D
        xc = tl.where(mask_d[None, :], xt - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / D
        y = xc * (1.0 / tl.sqrt(var + eps))[:, None]
        # Broadcast products reduced in fp32 FMAs (tl.dot's IEEE path spills, TF32 breaks 1e-5).
        s = tl.sum(y[:, None, :] * a[None, :, :], axis=2)  # (BLOCK_N, KT)
        s += tl.load(p_ptr + offs_k[None, :] * N + offs_n[:, None], mask=mask_k[None, :] & mask_n[:, None], other=0.0)
        s = tl.where(mask_n[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        w = tl.exp(s - m_new[None, :])
        l = l * alpha + tl.sum(w, axis=0)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * y[:, None, :], axis=0)
        m = m_new
    if SPLIT:
        # (m, l, acc) per (image, chunk, k): merged after the kernel.
        row = (pid.to(tl.int64) * K + offs_k) * (BLOCK_D + 2)
        tl.store(part_ptr + row, m, mask=mask_k)
        tl.store(part_ptr + row + 1, l, mask=mask_k)
        tl.store(part_ptr + row[:, None] + 2 + offs_d[None, :], acc, mask=mask_k[:, None] & mask_d[None, :])
    else:
        out = acc / l[:, None]
        dst = (b * K + offs_k) * D
        tl.store(acc_ptr + dst[:, None] + offs_d[None, :], out, mask=mask_k[:, None] & mask_d[None, :])
        tl.store(lse_ptr + b * K + offs_k, m + tl.log(l), mask=mask_k)


@triton.jit
def compress_folded_bwd_kernel(
    # pointers
    x_ptr, a_ptr, p_ptr, lse_ptr, g_ptr, c_ptr, dx_ptr, da_ptr, dp_ptr,
    # sizes and strides (elements); dx is contiguous (B, N, D)
    N, D, K, stride_xb, stride_xn, chunk, splits, eps,
    # meta
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KT: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = (pid // splits).to(tl.int64)
    sp = pid % splits
    n0 = sp * chunk
    n1 = tl.minimum(N, n0 + chunk)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_k = tl.arange(0, KT)
    mask_k = offs_k < K
    mask_kd = mask_k[:, None] & mask_d[None, :]
    a = tl.load(a_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_kd, other=0.0)
    row = b * K + offs_k
    g = tl.load(g_ptr + row[:, None] * D + offs_d[None, :], mask=mask_kd, other=0.0)
    lse = tl.load(lse_ptr + row, mask=mask_k, other=0.0)
    c = tl.load(c_ptr + row, mask=mask_k, other=0.0)
    da = tl.zeros([KT, BLOCK_D], tl.float32)
    x_img = x_ptr + b * stride_xb
    dx_img = dx_ptr + b * N * D
    for j0 in range(n0, n1, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n1
        mask_nd = mask_n[:, None] & mask_d[None, :]
        mask_nk = mask_n[:, None] & mask_k[None, :]
        xt = tl.load(x_img + offs_n[:, None].to(tl.int64) * stride_xn + offs_d[None, :], mask=mask_nd, other=0.0)
        xt = xt.to(tl.float32)
        mean = tl.sum(xt, axis=1) / D
        xc = tl.where(mask_d[None, :], xt - mean[:, None], 0.0)
        r = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        y = xc * r[:, None]
        s = tl.sum(y[:, None, :] * a[None, :, :], axis=2)  # (BLOCK_N, KT)
        s += tl.load(p_ptr + offs_k[None, :] * N + offs_n[:, None], mask=mask_nk, other=0.0)
        prob = tl.where(mask_nk, tl.exp(s - lse[None, :]), 0.0)
        ds = prob * (tl.sum(y[:, None, :] * g[None, :, :], axis=2) - c[None, :])
        tl.store(dp_ptr + row[None, :] * N + offs_n[:, None], ds, mask=mask_nk)
        da += tl.sum(ds[:, :, None] * y[:, None, :], axis=0)
        dy = tl.sum(prob[:, :, None] * g[None, :, :] + ds[:, :, None] * a[None, :, :], axis=1)  # (BLOCK_N, BLOCK_D)
        m1 = tl.sum(dy, axis=1) / D
        m2 = tl.sum(dy * y, axis=1) / D
        dx = r[:, None] * (dy - m1[:, None] - y * m2[:, None])
        dst = dx_img + offs_n[:, None].to(tl.int64) * D + offs_d[None, :]
        tl.store(dst, dx.to(dx_ptr.dtype.element_ty), mask=mask_nd)
    tl.store(da_ptr + (pid.to(tl.int64) * K + offs_k[:, None]) * D + offs_d[None, :], da, mask=mask_kd)


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _num_warps(block_d: int) -> int:
    return 4 if block_d <= 256 else 8


def _auto_splits(batch: int, n: int, k_tiles: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = -(-2 * sms // max(1, batch * k_tiles))
    return max(1, min(want, n // 64))


def launch(x: torch.Tensor, a: torch.Tensor, p: torch.Tensor, eps: float, splits: int = 0):
    """The folded core with the Triton kernel: (acc (B, K, D) fp32, lse (B, K) fp32); the body
    of the op ``lmini::compress_folded_triton`` (triton_op.py)."""
    if x.stride(2) != 1:
        x = x.contiguous()
    a, p = a.contiguous(), p.contiguous()
    batch, n, dim = x.shape
    k = a.shape[0]
    acc = new_output((batch, k, dim), torch.float32, x.device)
    lse = new_output((batch, k), torch.float32, x.device)
    if batch == 0 or k == 0:
        return acc, lse
    k_tiles = triton.cdiv(k, KT)
    if splits < 0:
        raise ValueError(f"splits: expected >= 0 (0: the kernel chooses), got {splits}")
    splits = min(n, splits or _auto_splits(batch, n, k_tiles, x.device))
    chunk = triton.cdiv(n, splits)
    splits = triton.cdiv(n, chunk)
    block_d = _block_d(dim)
    part = torch.empty((batch * splits, k, block_d + 2), dtype=torch.float32, device=x.device) if splits > 1 else acc
    compress_folded_fwd_kernel[check_grid("compress_folded_fwd_kernel", (batch * splits, k_tiles))](
        x, a, p, acc, lse, part, n, dim, k, x.stride(0), x.stride(1), chunk, splits, eps,
        BLOCK_N=BLOCK_N, BLOCK_D=block_d, KT=KT, SPLIT=splits > 1, num_warps=_num_warps(block_d),
    )  # fmt: skip
    if splits > 1:
        part = part.view(batch, splits, k, block_d + 2)
        m, l_, st = part[..., 0], part[..., 1], part[..., 2 : 2 + dim]
        big = m.amax(dim=1, keepdim=True)
        w = torch.exp(m - big) * l_
        total = w.sum(dim=1)
        acc.copy_((st * (torch.exp(m - big) / total.unsqueeze(1)).unsqueeze(-1)).sum(dim=1))
        lse.copy_(big.squeeze(1) + torch.log(total))
    return acc, lse


def _kt_bwd(k: int) -> int:
    return max(8, triton.next_power_of_2(k))


def _num_warps_bwd(kt: int, block_d: int) -> int:
    # Chosen per tile size from the ptxas reports of every (KT, BLOCK_D) pair the kernel takes
    # (all in AOT_SPECS): the smallest count with no spill on both sm_80 and sm_90.
    tile = kt * block_d
    if tile <= 512:
        return 1
    if tile <= 1024:
        return 2
    return 16 if kt == 8 else 8


def triton_bwd_fits(k: int, dim: int) -> bool:
    """True when the Triton backward kernel keeps its (K x D) tiles in registers."""
    return k <= KT_BWD_MAX and _kt_bwd(k) * _block_d(dim) <= BWD_MAX_TILE


def launch_bwd(x, a, p, eps: float, acc, lse, g_acc, g_lse, splits: int = 0):
    """Gradients (dx, da, dp) of the folded core with the Triton kernel (K <= KT_BWD_MAX, fp32 a);
    the body of the op ``lmini::compress_folded_triton_bwd`` (triton_op.py).

    ``splits`` cuts each image's tokens into that many programs (0: the kernel picks)."""
    if not triton_bwd_fits(a.shape[0], x.shape[2]):
        raise ValueError(
            f"a: the Triton backward takes at most {KT_BWD_MAX} folded rows and (rows rounded up to a power of 2"
            f" >= 8) x (D rounded up to a power of 2) <= {BWD_MAX_TILE}; got {a.shape[0]} rows, D = {x.shape[2]}"
        )
    if x.stride(2) != 1:
        x = x.contiguous()
    a, p, lse = a.contiguous(), p.contiguous(), lse.contiguous()
    g = g_acc.to(torch.float32).contiguous()
    c = ((acc * g).sum(-1) - g_lse).contiguous()
    batch, n, dim = x.shape
    k = a.shape[0]
    dx = new_output((batch, n, dim), x.dtype, x.device)
    if batch == 0 or n == 0:
        return dx.zero_(), torch.zeros_like(a), torch.zeros_like(p)
    if splits < 0:
        raise ValueError(f"splits: expected >= 0 (0: the kernel chooses), got {splits}")
    splits = min(n, splits or _auto_splits(batch, n, 1, x.device))
    chunk = triton.cdiv(n, splits)
    splits = triton.cdiv(n, chunk)
    da = torch.empty((batch * splits, k, dim), dtype=torch.float32, device=x.device)
    dp = torch.empty((batch, k, n), dtype=torch.float32, device=x.device)
    block_d = _block_d(dim)
    compress_folded_bwd_kernel[check_grid("compress_folded_bwd_kernel", (batch * splits,))](
        x, a, p, lse, g, c, dx, da, dp, n, dim, k, x.stride(0), x.stride(1), chunk, splits, eps,
        BLOCK_N=BLOCK_N_BWD, BLOCK_D=block_d, KT=_kt_bwd(k), num_warps=_num_warps_bwd(_kt_bwd(k), block_d),
    )  # fmt: skip
    return dx, da.sum(0), dp.sum(0)


_SCALARS = {"N": "i32", "D": "i32", "K": "i32", "stride_xb": "i64", "stride_xn": "i64", "chunk": "i32",
            "splits": "i32", "eps": "fp32"}  # fmt: skip


def _signature(dt: str, pointers: str) -> dict[str, str]:
    """Triton signature: each pointer in ``pointers`` (space-separated; a leading ``~`` marks
    one of x's dtype, the rest are fp32), then the scalars the kernels share."""
    sig = {p.lstrip("~"): f"*{dt}" if p.startswith("~") else "*fp32" for p in pointers.split()}
    return {**sig, **_SCALARS}


AOT_SPECS = [
    AotSpec(
        name=f"compress_folded_fwd[{dt},BLOCK_D={bd},SPLIT={split}]",
        fn=compress_folded_fwd_kernel,
        signature=_signature(dt, "~x_ptr a_ptr p_ptr acc_ptr lse_ptr part_ptr"),
        constexprs={"BLOCK_N": BLOCK_N, "BLOCK_D": bd, "KT": KT, "SPLIT": split},
        num_warps=_num_warps(bd),
        num_stages=1,
    )
    for dt, bd, split in [(dt, bd, False) for dt in ("fp32", "fp16", "bf16") for bd in (128, 1024)]
    + [("fp16", 1024, True)]
] + [
    AotSpec(
        name=f"compress_folded_bwd[{dt},BLOCK_D={bd},KT={kt}]",
        fn=compress_folded_bwd_kernel,
        signature=_signature(dt, "~x_ptr a_ptr p_ptr lse_ptr g_ptr c_ptr ~dx_ptr da_ptr dp_ptr"),
        constexprs={"BLOCK_N": BLOCK_N_BWD, "BLOCK_D": bd, "KT": kt},
        num_warps=_num_warps_bwd(kt, bd),
        num_stages=1,
    )
    for dt, bd, kt in [(dt, bd, 8) for dt in ("fp32", "bf16") for bd in (128, 1024)]
    + [("fp16", bd, kt) for kt in (8, 16) for bd in (16, 32, 64, 128, 256, 512, 1024) if kt * bd <= BWD_MAX_TILE]
]
