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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmini_kernels.backends import new_output
from lmini_kernels.ops.compress.core import core_autograd_backward, core_fake, core_setup
from lmini_kernels.triton_aot import AotSpec

KT = 8
BLOCK_N = 4


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


@torch.library.custom_op("lmini::compress_folded_triton", mutates_args=())
def core_triton(
    x: torch.Tensor, a: torch.Tensor, p: torch.Tensor, eps: float, splits: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded core with the Triton kernel: (acc (B, K, D) fp32, lse (B, K) fp32)."""
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
    splits = min(n, splits or _auto_splits(batch, n, k_tiles, x.device))
    chunk = triton.cdiv(n, splits)
    splits = triton.cdiv(n, chunk)
    block_d = _block_d(dim)
    part = torch.empty((batch * splits, k, block_d + 2), dtype=torch.float32, device=x.device) if splits > 1 else acc
    compress_folded_fwd_kernel[(batch * splits, k_tiles)](
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


core_triton.register_fake(core_fake)
core_triton.register_autograd(core_autograd_backward, setup_context=core_setup)

AOT_SPECS = [
    AotSpec(
        name=f"compress_folded_fwd[{dt},BLOCK_D={bd},SPLIT={split}]",
        fn=compress_folded_fwd_kernel,
        signature={
            "x_ptr": f"*{dt}",
            "a_ptr": "*fp32",
            "p_ptr": "*fp32",
            "acc_ptr": "*fp32",
            "lse_ptr": "*fp32",
            "part_ptr": "*fp32",
            "N": "i32",
            "D": "i32",
            "K": "i32",
            "stride_xb": "i64",
            "stride_xn": "i64",
            "chunk": "i32",
            "splits": "i32",
            "eps": "fp32",
        },
        constexprs={"BLOCK_N": BLOCK_N, "BLOCK_D": bd, "KT": KT, "SPLIT": split},
        num_warps=_num_warps(bd),
        num_stages=1,
    )
    for dt, bd, split in [(dt, bd, False) for dt in ("fp32", "fp16", "bf16") for bd in (128, 1024)]
    + [("fp16", 1024, True)]
]
