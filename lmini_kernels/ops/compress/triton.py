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
(which also keeps the interpreter exact: it computes bf16 on raw bits). Large K (the resampler
family's Q*heads = 1152..3072) is correct, one pass over x per 8 rows: not fast, and the GPU's
auto choice takes the projected path there.

The resampler family's arguments are constexpr branches (HAS_PIDX, HAS_LEN, NORMALIZE), so
LLaVA-Mini's plain core compiles as before (same registers on sm_90): with pidx a token's p
column is loaded from pidx (int32, masked like x); with lengths a program's token range ends at
the image's length, so unseen tokens are never loaded (an empty chunk stores m = -inf, l = 0,
and the merge and the final division guard 0/0: an image with no seen token gives acc 0, lse
-inf); masked rows get y = 0 through r = 0 (no 0 * inf even at eps = 0). D stays <= 1024: at
BLOCK_D = 2048 the forward spills (sm_90 ptxas: 260 bytes at 8 warps, 612 at 16).

Backward (``compress_folded_bwd_kernel``, op ``lmini::compress_folded_triton_bwd``): grid
(B * splits,), one program per (image, chunk of tokens) holding all K <= KT_BWD_MAX folded rows
(a, the incoming gradient G and the partial da in registers). Per token tile it recomputes y and
the probabilities from the saved lse, forms ds_kj = prob_kj (y_j . G_k - c_k) with
c_k = acc_k . G_k - g_lse_k (computed before the launch), writes ds (= the per-image dp, summed
over images after the kernel), adds ds^T y into da, and writes dx through the LayerNorm backward.
x and G are read once, dx written once. Beyond its register tile (see ``triton_bwd_fits``: K <= 8
at D <= 1024, K <= 16 at D <= 512; LLaVA-Mini's K = 8, D = 1024 fits, and the GPU's auto choice
takes the projected path past 16 rows) the analytic PyTorch backward runs instead. With
lengths, a second loop writes dx = 0 and ds = 0 for the unseen tokens (reading nothing); with
pidx, dp is ds scattered into p's T columns after the kernel (``launch_bwd``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmini_kernels.checks import check_grid, check_tensor
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
def _token_tile(
    x_img, stride_xn, p_ptr, pidx_img, a, offs_n, mask_n, offs_d, mask_d, offs_k, mask_k, D, T, eps,
    HAS_PIDX: tl.constexpr, NORMALIZE: tl.constexpr,
):  # fmt: skip
    """One tile of tokens (rows offs_n where mask_n): (y, r, s) with y the rows the core weighs
    (LayerNorm without affine, or x), r their 1/std (1 without normalisation) and s = y @ a^T +
    p[:, pidx] (BLOCK_N x KT). Masked tokens are never read: y = 0 there (also with eps = 0),
    and their p entries (whatever column pidx names) are not loaded."""
    xt = tl.load(
        x_img + offs_n[:, None].to(tl.int64) * stride_xn + offs_d[None, :],
        mask=mask_n[:, None] & mask_d[None, :],
        other=0.0,
    ).to(tl.float32)
    if NORMALIZE:
        mean = tl.sum(xt, axis=1) / D
        xc = tl.where(mask_d[None, :], xt - mean[:, None], 0.0)
        r = tl.where(mask_n, 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps), 0.0)
        y = xc * r[:, None]
    else:
        r = tl.where(mask_n, 1.0, 0.0)
        y = xt
    if HAS_PIDX:
        cols = tl.load(pidx_img + offs_n, mask=mask_n, other=0)
    else:
        cols = offs_n
    # Broadcast products reduced in fp32 FMAs (tl.dot's IEEE path spills, TF32 breaks 1e-5).
    s = tl.sum(y[:, None, :] * a[None, :, :], axis=2)  # (BLOCK_N, KT)
    s += tl.load(p_ptr + offs_k[None, :] * T + cols[:, None], mask=mask_k[None, :] & mask_n[:, None], other=0.0)
    return y, r, s


@triton.jit
def compress_folded_fwd_kernel(
    # pointers (pidx_ptr, len_ptr: int32, read only with HAS_PIDX, HAS_LEN)
    x_ptr, a_ptr, p_ptr, pidx_ptr, len_ptr, acc_ptr, lse_ptr, part_ptr,
    # sizes and strides (elements); T: the row stride of p (its column count)
    N, D, K, T, stride_xb, stride_xn, chunk, splits, eps,
    # meta
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KT: tl.constexpr, SPLIT: tl.constexpr,
    HAS_PIDX: tl.constexpr, HAS_LEN: tl.constexpr, NORMALIZE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kt = tl.program_id(1)
    b = (pid // splits).to(tl.int64)  # int64: b * stride_xb passes 2^31 for big batches
    sp = pid % splits
    n0 = sp * chunk
    n1 = tl.minimum(N, n0 + chunk)
    if HAS_LEN:
        n1 = tl.minimum(n1, tl.load(len_ptr + b))  # tokens past the image's length: never read
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_k = kt * KT + tl.arange(0, KT)
    mask_k = offs_k < K
    a = tl.load(a_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_k[:, None] & mask_d[None, :], other=0.0)
    m = tl.full([KT], float("-inf"), tl.float32)
    l = tl.zeros([KT], tl.float32)
    acc = tl.zeros([KT, BLOCK_D], tl.float32)
    x_img = x_ptr + b * stride_xb
    pidx_img = pidx_ptr + b * N
    # Every tile holds at least one seen token (n1 is clamped), so m turns finite at the first.
    for j0 in range(n0, n1, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n1
        y, _r, s = _token_tile(
            x_img, stride_xn, p_ptr, pidx_img, a, offs_n, mask_n, offs_d, mask_d, offs_k, mask_k, D, T, eps,
            HAS_PIDX, NORMALIZE,
        )  # fmt: skip
        s = tl.where(mask_n[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        w = tl.exp(s - m_new[None, :])
        l = l * alpha + tl.sum(w, axis=0)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * y[:, None, :], axis=0)
        m = m_new
    if SPLIT:
        # (m, l, acc) per (image, chunk, k): merged after the kernel (a chunk with no seen
        # token stores m = -inf, l = 0, acc = 0).
        row = (pid.to(tl.int64) * K + offs_k) * (BLOCK_D + 2)
        tl.store(part_ptr + row, m, mask=mask_k)
        tl.store(part_ptr + row + 1, l, mask=mask_k)
        tl.store(part_ptr + row[:, None] + 2 + offs_d[None, :], acc, mask=mask_k[:, None] & mask_d[None, :])
    else:
        # No seen token: acc = 0 and lse = -inf + log(0) = -inf.
        out = acc / tl.where(l == 0.0, 1.0, l)[:, None]
        dst = (b * K + offs_k) * D
        tl.store(acc_ptr + dst[:, None] + offs_d[None, :], out, mask=mask_k[:, None] & mask_d[None, :])
        tl.store(lse_ptr + b * K + offs_k, m + tl.log(l), mask=mask_k)


@triton.jit
def compress_folded_bwd_kernel(
    # pointers (pidx_ptr, len_ptr: int32, read only with HAS_PIDX, HAS_LEN)
    x_ptr, a_ptr, p_ptr, pidx_ptr, len_ptr, lse_ptr, g_ptr, c_ptr, dx_ptr, da_ptr, dp_ptr,
    # sizes and strides (elements); dx is contiguous (B, N, D), dp (B, K, N): ds per token
    N, D, K, T, stride_xb, stride_xn, chunk, splits, eps,
    # meta
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KT: tl.constexpr,
    HAS_PIDX: tl.constexpr, HAS_LEN: tl.constexpr, NORMALIZE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = (pid // splits).to(tl.int64)
    sp = pid % splits
    n0 = sp * chunk
    n1 = tl.minimum(N, n0 + chunk)
    n_seen = n1
    if HAS_LEN:
        n_seen = tl.maximum(n0, tl.minimum(n1, tl.load(len_ptr + b)))
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
    pidx_img = pidx_ptr + b * N
    dx_img = dx_ptr + b * N * D
    for j0 in range(n0, n_seen, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_seen
        mask_nk = mask_n[:, None] & mask_k[None, :]
        y, r, s = _token_tile(
            x_img, stride_xn, p_ptr, pidx_img, a, offs_n, mask_n, offs_d, mask_d, offs_k, mask_k, D, T, eps,
            HAS_PIDX, NORMALIZE,
        )  # fmt: skip
        prob = tl.where(mask_nk, tl.exp(s - lse[None, :]), 0.0)
        ds = prob * (tl.sum(y[:, None, :] * g[None, :, :], axis=2) - c[None, :])
        tl.store(dp_ptr + row[None, :] * N + offs_n[:, None], ds, mask=mask_nk)
        da += tl.sum(ds[:, :, None] * y[:, None, :], axis=0)
        dy = tl.sum(prob[:, :, None] * g[None, :, :] + ds[:, :, None] * a[None, :, :], axis=1)  # (BLOCK_N, BLOCK_D)
        if NORMALIZE:
            m1 = tl.sum(dy, axis=1) / D
            m2 = tl.sum(dy * y, axis=1) / D
            dx = r[:, None] * (dy - m1[:, None] - y * m2[:, None])
        else:
            dx = dy
        dst = dx_img + offs_n[:, None].to(tl.int64) * D + offs_d[None, :]
        tl.store(dst, dx.to(dx_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])
    if HAS_LEN:
        # Unseen tokens: zero gradients, nothing read.
        for j0 in range(n_seen, n1, BLOCK_N):
            offs_n = j0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < n1
            zero_nd = tl.zeros([BLOCK_N, BLOCK_D], tl.float32).to(dx_ptr.dtype.element_ty)
            dst = dx_img + offs_n[:, None].to(tl.int64) * D + offs_d[None, :]
            tl.store(dst, zero_nd, mask=mask_n[:, None] & mask_d[None, :])
            mask_nk = mask_n[:, None] & mask_k[None, :]
            tl.store(dp_ptr + row[None, :] * N + offs_n[:, None], tl.zeros([BLOCK_N, KT], tl.float32), mask=mask_nk)
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


def _chunks(n: int, splits: int, auto) -> tuple[int, int]:
    """(splits, chunk): ``splits`` (0: ``auto()``) cut to at most one chunk per token, chunks
    of ``chunk`` tokens; a ValueError for a negative count."""
    if splits < 0:
        raise ValueError(f"splits: expected >= 0 (0: the kernel chooses), got {splits}")
    splits = max(1, min(n, splits or auto()))
    chunk = triton.cdiv(n, splits)
    return triton.cdiv(n, chunk), chunk


def _token_args(x: torch.Tensor, p: torch.Tensor, pidx, lengths):
    """(pidx, lengths) as contiguous int32 tensors for the kernels (a one-element dummy for an
    absent one: its kernel branch is compiled out), after checking dtype, shape and device.
    The ranges (pidx in [0, T), lengths in [0, N]) are the caller's to check."""
    batch, n = x.shape[:2]
    dummy = None
    out = []
    for name, t, shape in (("pidx", pidx, (batch, n)), ("lengths", lengths, (batch,))):
        if t is None:
            if dummy is None:
                dummy = torch.empty(1, dtype=torch.int32, device=x.device)  # never read: no fill launch
            out.append(dummy)
            continue
        check_tensor(name, t, shape=shape, floating=False)
        if t.dtype != torch.int32:
            raise TypeError(f"{name}: expected an int32 tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        out.append(t.contiguous())
    if pidx is None and p.shape[1] != n:
        raise ValueError(f"p: expected {n} columns (one per token; pidx is None), got shape {tuple(p.shape)}")
    return out


def _merge_splits(part: torch.Tensor, acc: torch.Tensor, lse: torch.Tensor, splits: int) -> None:
    """acc, lse from the per-chunk (m, l, acc) states the split kernel stored. A chunk with
    no seen token (m = -inf, l = 0) adds nothing; an image with none gives acc 0, lse -inf."""
    batch, k, dim = acc.shape
    part = part.view(batch, splits, k, -1)
    m, l_, st = part[..., 0], part[..., 1], part[..., 2 : 2 + dim]
    big = m.amax(dim=1, keepdim=True)
    big = torch.where(big == -torch.inf, 0.0, big)
    e = torch.exp(m - big)
    total = (e * l_).sum(dim=1)
    acc.copy_((st * e.unsqueeze(-1)).sum(dim=1) / torch.where(total == 0, 1.0, total).unsqueeze(-1))
    lse.copy_(big.squeeze(1) + torch.log(total))


def launch(
    x: torch.Tensor, a: torch.Tensor, p: torch.Tensor, eps: float, splits: int = 0,
    pidx: torch.Tensor | None = None, lengths: torch.Tensor | None = None, normalize: bool = True,
):  # fmt: skip
    """The folded core with the Triton kernel: (acc (B, K, D) fp32, lse (B, K) fp32); the body
    of the op ``lmini::compress_folded_triton`` (triton_op.py; arguments as in core.py)."""
    if x.stride(2) != 1:
        x = x.contiguous()
    a, p = a.contiguous(), p.contiguous()
    batch, n, dim = x.shape
    k = a.shape[0]
    pidx_t, len_t = _token_args(x, p, pidx, lengths)
    acc = new_output((batch, k, dim), torch.float32, x.device)
    lse = new_output((batch, k), torch.float32, x.device)
    if batch == 0 or k == 0:
        return acc, lse
    if n == 0:
        return acc.zero_(), lse.fill_(-torch.inf)
    k_tiles = triton.cdiv(k, KT)
    splits, chunk = _chunks(n, splits, lambda: _auto_splits(batch, n, k_tiles, x.device))
    block_d = _block_d(dim)
    part = torch.empty((batch * splits, k, block_d + 2), dtype=torch.float32, device=x.device) if splits > 1 else acc
    compress_folded_fwd_kernel[check_grid("compress_folded_fwd_kernel", (batch * splits, k_tiles))](
        x, a, p, pidx_t, len_t, acc, lse, part, n, dim, k, p.shape[1], x.stride(0), x.stride(1), chunk, splits, eps,
        BLOCK_N=BLOCK_N, BLOCK_D=block_d, KT=KT, SPLIT=splits > 1, HAS_PIDX=pidx is not None,
        HAS_LEN=lengths is not None, NORMALIZE=bool(normalize), num_warps=_num_warps(block_d),
    )  # fmt: skip
    if splits > 1:
        _merge_splits(part, acc, lse, splits)
    return acc, lse


def _kt_bwd(k: int) -> int:
    return max(8, triton.next_power_of_2(k))


def _num_warps_bwd(kt: int, block_d: int) -> int:
    # Chosen per tile size from the ptxas reports of every (KT, BLOCK_D) pair the kernel takes
    # (all in AOT_SPECS): the smallest count with no spill on both sm_80 and sm_90, with triton
    # 3.8 and 3.6 (3.6 spilled 24 bytes at KT = 16, BLOCK_D = 32 with one warp).
    tile = kt * block_d
    if tile <= 256 or (tile <= 512 and kt == 8):
        return 1
    if tile <= 1024:
        return 2
    return 16 if kt == 8 else 8


def triton_bwd_fits(k: int, dim: int) -> bool:
    """True when the Triton backward kernel keeps its (K x D) tiles in registers."""
    return k <= KT_BWD_MAX and _kt_bwd(k) * _block_d(dim) <= BWD_MAX_TILE


def launch_bwd(
    x, a, p, eps: float, acc, lse, g_acc, g_lse, splits: int = 0,
    pidx: torch.Tensor | None = None, lengths: torch.Tensor | None = None, normalize: bool = True,
):  # fmt: skip
    """Gradients (dx, da, dp) of the folded core with the Triton kernel (K <= KT_BWD_MAX, fp32 a);
    the body of the op ``lmini::compress_folded_triton_bwd`` (triton_op.py).

    ``splits`` cuts each image's tokens into that many programs (0: the kernel picks); pidx,
    lengths, normalize as in the forward (core.py). The kernel writes ds per (image, k, token);
    dp is its sum over images, or with pidx its scatter-add into p's columns (torch's
    index_add_, after the kernel: deterministic under torch's deterministic mode, unlike
    atomics in the kernel, and the kernel's stores stay the same)."""
    if not triton_bwd_fits(a.shape[0], x.shape[2]):
        raise ValueError(
            f"a: the Triton backward takes at most {KT_BWD_MAX} folded rows and (rows rounded up to a power of 2"
            f" >= 8) x (D rounded up to a power of 2) <= {BWD_MAX_TILE}; got {a.shape[0]} rows, D = {x.shape[2]}"
        )
    if x.stride(2) != 1:
        x = x.contiguous()
    a, p, lse = a.contiguous(), p.contiguous(), lse.contiguous()
    pidx_t, len_t = _token_args(x, p, pidx, lengths)
    g = g_acc.to(torch.float32).contiguous()
    c = ((acc * g).sum(-1) - g_lse).contiguous()
    batch, n, dim = x.shape
    k = a.shape[0]
    dx = new_output((batch, n, dim), x.dtype, x.device)
    if batch == 0 or n == 0:
        return dx.zero_(), torch.zeros_like(a), torch.zeros_like(p)
    splits, chunk = _chunks(n, splits, lambda: _auto_splits(batch, n, 1, x.device))
    da = torch.empty((batch * splits, k, dim), dtype=torch.float32, device=x.device)
    ds = torch.empty((batch, k, n), dtype=torch.float32, device=x.device)
    block_d = _block_d(dim)
    compress_folded_bwd_kernel[check_grid("compress_folded_bwd_kernel", (batch * splits,))](
        x, a, p, pidx_t, len_t, lse, g, c, dx, da, ds, n, dim, k, p.shape[1], x.stride(0), x.stride(1), chunk,
        splits, eps, BLOCK_N=BLOCK_N_BWD, BLOCK_D=block_d, KT=_kt_bwd(k), HAS_PIDX=pidx is not None,
        HAS_LEN=lengths is not None, NORMALIZE=bool(normalize), num_warps=_num_warps_bwd(_kt_bwd(k), block_d),
    )  # fmt: skip
    if pidx is None:
        return dx, da.sum(0), ds.sum(0)
    cols = pidx_t.long()
    if lengths is not None:  # unseen tokens (ds = 0 there) land on column 0 whatever pidx holds
        cols = torch.where(torch.arange(n, device=x.device) < len_t.view(-1, 1), cols, 0)
    dp = torch.zeros((k, p.shape[1]), dtype=torch.float32, device=x.device)
    dp.index_add_(1, cols.view(-1), ds.transpose(0, 1).reshape(k, batch * n))
    return dx, da.sum(0), dp


_SCALARS = {"N": "i32", "D": "i32", "K": "i32", "T": "i32", "stride_xb": "i64", "stride_xn": "i64",
            "chunk": "i32", "splits": "i32", "eps": "fp32"}  # fmt: skip


def _signature(dt: str, pointers: str) -> dict[str, str]:
    """Triton signature: each pointer in ``pointers`` (space-separated; a leading ``~`` marks
    one of x's dtype, ``#`` an int32 one, the rest are fp32), then the scalars the kernels share."""
    kinds = {"~": f"*{dt}", "#": "*i32"}
    sig = {p.lstrip("~#"): kinds.get(p[0], "*fp32") for p in pointers.split()}
    return {**sig, **_SCALARS}


# (HAS_PIDX, HAS_LEN, NORMALIZE): LLaVA-Mini's plain core, and the resampler family's
# per-token columns and lengths with and without the LayerNorm.
PLAIN, INDEXED, RAW = (False, False, True), (True, True, True), (True, True, False)


def _flags(flags: tuple[bool, bool, bool]) -> dict[str, bool]:
    return dict(zip(("HAS_PIDX", "HAS_LEN", "NORMALIZE"), flags, strict=True))


def _flag_name(flags: tuple[bool, bool, bool]) -> str:
    return {PLAIN: "", INDEXED: ",pidx,lengths", RAW: ",pidx,lengths,raw"}[flags]


AOT_SPECS = [
    AotSpec(
        name=f"compress_folded_fwd[{dt},BLOCK_D={bd},SPLIT={split}{_flag_name(flags)}]",
        fn=compress_folded_fwd_kernel,
        signature=_signature(dt, "~x_ptr a_ptr p_ptr #pidx_ptr #len_ptr acc_ptr lse_ptr part_ptr"),
        constexprs={"BLOCK_N": BLOCK_N, "BLOCK_D": bd, "KT": KT, "SPLIT": split, **_flags(flags)},
        num_warps=_num_warps(bd),
        num_stages=1,
    )
    for dt, bd, split, flags in [(dt, bd, False, PLAIN) for dt in ("fp32", "fp16", "bf16") for bd in (128, 1024)]
    + [("fp16", 1024, True, PLAIN), ("fp16", 1024, True, INDEXED), ("bf16", 1024, False, INDEXED)]
    + [("fp16", 1024, False, RAW), ("fp32", 128, True, RAW)]
] + [
    AotSpec(
        name=f"compress_folded_bwd[{dt},BLOCK_D={bd},KT={kt}{_flag_name(flags)}]",
        fn=compress_folded_bwd_kernel,
        signature=_signature(dt, "~x_ptr a_ptr p_ptr #pidx_ptr #len_ptr lse_ptr g_ptr c_ptr ~dx_ptr da_ptr dp_ptr"),
        constexprs={"BLOCK_N": BLOCK_N_BWD, "BLOCK_D": bd, "KT": kt, **_flags(flags)},
        num_warps=_num_warps_bwd(kt, bd),
        num_stages=1,
    )
    for dt, bd, kt, flags in [(dt, bd, 8, PLAIN) for dt in ("fp32", "bf16") for bd in (128, 1024)]
    + [("fp16", bd, kt, PLAIN) for kt in (8, 16) for bd in (16, 32, 64, 128, 256, 512, 1024) if kt * bd <= BWD_MAX_TILE]
    + [
        (dt, bd, kt, flags)
        for dt, bd, kt in (("fp16", 1024, 8), ("bf16", 1024, 8), ("fp16", 512, 16))
        for flags in (INDEXED, RAW)
    ]
]
