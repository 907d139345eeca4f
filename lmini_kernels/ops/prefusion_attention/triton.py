"""Triton pre-fusion attention: flash-attention forward (online softmax) and backward.

Layout as flash-attn: q (B, Lq, Hq, d), k and v (B, Lk, Hkv, d), out (B, Lq, Hq, d); the
queries are the last Lq of the Lk positions, so the causal mask is aligned to the
bottom-right (query i sees keys j <= Lk - Lq + i); key_padding_mask (B, Lk) hides keys; GQA
maps query head h to kv head h // (Hq // Hkv). A row with no visible key gives zeros.

Forward, grid (cdiv(Lq, BLOCK_M), B * Hq, splits): one program holds BLOCK_M query rows of
one head in registers and streams BLOCK_N-key tiles of K and V, keeping the running max and
sum in fp32 (log2 domain: the scale is folded with log2(e) so the kernel uses exp2). With
splits > 1 (few queries, many keys: the text suffix over a cached vision prefix, where
cdiv(Lq, BLOCK_M) * B * Hq programs would leave most SMs idle) each program takes one slice
of the keys and writes an unnormalised partial result; ``prefusion_attn_combine_kernel``
merges the slices.
FLOPs: 4 * B * Hq * d * (visible query-key pairs). Bytes: q, out once; k, v once per query
block (per split) -- compute-bound at the 620 x 620 causal shape, memory-bound for Lq = 44
when not split.

Backward (flash-attention 2 scheme): ``delta = rowsum(dO * O)``; one program per (key block,
kv head) accumulates dK and dV over every query block of every query head of its GQA group
(no atomics); one program per (query block, query head) accumulates dQ over the key blocks.
The scores are recomputed from the saved log-sum-exp.

fp32 inputs use IEEE fp32 dot products (not tf32) so they meet fp32 tolerances; bf16 is
refused under the interpreter (it computes bf16 on raw bits, see verification.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmini_kernels.checks import MAX_GRID, check_grid
from lmini_kernels.env import triton_interpret
from lmini_kernels.outputs import new_output
from lmini_kernels.triton_aot import AotSpec

#: TRITON_INTERPRET when these kernels were decorated (Triton fixes their mode then);
#: checked before every launch by :func:`lmini_kernels.backends.triton_launch`.
INTERPRETED = triton_interpret()

LOG2E = 1.4426950408889634


@triton.jit
def _past_horizon(b, acc, offs_b, offs_acc, shift, B_IS_KEYS: tl.constexpr):
    """For ``acc + a @ b`` over a tile that crosses the causal horizon (query i sees key
    j <= shift + i), where ``a`` is 0 on the pairs past it and ``b``'s rows (at positions
    offs_b) may hold NaN or inf: b with its non-finite values zeroed, and acc NaN at (r, c)
    where acc row r is paired with a b row holding a non-finite b[n, c] (the reference's rule),
    so no 0 * NaN reaches a row that is not. B_IS_KEYS: b rows are keys (K, V) and acc rows
    queries offs_acc (the forward's P V, the backward's dS K: the first bad key of column c
    within the row's horizon); else b rows are queries (q) and acc rows keys (dS^T q: the last
    bad query of the column sees the key). The common case (b finite) costs one reduction; the
    callers take this only on the tiles that cross the horizon (one or two per block)."""
    bad = (b * 0.0) != 0.0  # NaN or inf: x * 0 is NaN exactly then
    if tl.max(bad.to(tl.int32)) > 0:
        if B_IS_KEYS:
            first = tl.min(tl.where(bad, offs_b[:, None], 2147483647), 0)  # per column
            seen = first[None, :] <= (shift + offs_acc)[:, None]
        else:
            last = tl.max(tl.where(bad, offs_b[:, None], -2147483647), 0)
            seen = offs_acc[:, None] <= (shift + last)[None, :]
        acc = tl.where(seen, float("nan"), acc)
        b = tl.where(bad, 0.0, b).to(b.dtype)
    return b, acc


@triton.jit
def prefusion_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr, ws_o_ptr, ws_ml_ptr,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
    lq, lk, hq, group, keys_per_split, scale_log2,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // hq).to(tl.int64)  # int64: b * stride can pass 2^31
    h = pid_bh % hq
    hk = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < lq
    q = tl.load(
        q_ptr + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    k_base = k_ptr + b * skb + hk * skh
    v_base = v_ptr + b * svb + hk * svh
    shift = lk - lq  # query i is position shift + i
    hi = lk
    if CAUSAL:
        hi = tl.minimum(lk, shift + (pid_m + 1) * BLOCK_M)
    lo = pid_s * keys_per_split
    hi = tl.minimum(hi, lo + keys_per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        kt = tl.load(k_base + offs_n[None, :] * skl + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2
        visible = n_ok[None, :] & m_ok[:, None]
        if HAS_MASK:
            pad = tl.load(mask_ptr + b * lk + offs_n, mask=n_ok, other=1)
            visible = visible & (pad == 0)[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= shift + offs_m[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet: no NaN
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svl + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None]
        if CAUSAL:
            # A tile with keys past the first row's horizon: those rows' P is 0 there, but a
            # non-finite V of such a key (later rows see it) would reach them through 0 * NaN.
            if start + BLOCK_N - 1 > shift + pid_m * BLOCK_M:
                v, acc = _past_horizon(v, acc, offs_n, offs_m, shift, True)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if SPLIT:
        # Unnormalised partials: ws_o (B*Hq, splits, Lq, HEAD_DIM), ws_ml (B*Hq, splits, 2, Lq).
        nsplit = tl.num_programs(2)
        row = (pid_bh * nsplit + pid_s).to(tl.int64)
        tl.store(
            ws_o_ptr + (row * lq + offs_m[:, None]) * HEAD_DIM + offs_d[None, :],
            acc,
            mask=m_ok[:, None] & d_ok[None, :],
        )
        tl.store(ws_ml_ptr + row * 2 * lq + offs_m, m_i, mask=m_ok)
        tl.store(ws_ml_ptr + row * 2 * lq + lq + offs_m, l_i, mask=m_ok)
    else:
        inv = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)  # no visible key: zeros
        out = acc * inv[:, None]
        tl.store(
            o_ptr + ((b * lq + offs_m[:, None]) * hq + h) * HEAD_DIM + offs_d[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=m_ok[:, None] & d_ok[None, :],
        )
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + pid_bh.to(tl.int64) * lq + offs_m, lse, mask=m_ok)


@triton.jit
def prefusion_attn_combine_kernel(
    ws_o_ptr, ws_ml_ptr, o_ptr, lse_ptr, lq, hq, nsplit,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Merge the split partials of BLOCK_M rows of one (batch, head): grid (cdiv(Lq, BLOCK_M), B * Hq)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // hq).to(tl.int64)
    h = pid_bh % hq
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < lq
    d_ok = offs_d < HEAD_DIM
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(0, nsplit):
        row = pid_bh.to(tl.int64) * nsplit + s
        m_s = tl.load(ws_ml_ptr + row * 2 * lq + offs_m, mask=m_ok, other=float("-inf"))
        l_s = tl.load(ws_ml_ptr + row * 2 * lq + lq + offs_m, mask=m_ok, other=0.0)
        o_s = tl.load(
            ws_o_ptr + (row * lq + offs_m[:, None]) * HEAD_DIM + offs_d[None, :],
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        m_new = tl.maximum(m_i, m_s)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        a_old = tl.exp2(m_i - m_use)
        a_new = tl.exp2(m_s - m_use)
        l_i = l_i * a_old + l_s * a_new
        acc = acc * a_old[:, None] + o_s * a_new[:, None]
        m_i = m_new
    inv = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
    tl.store(
        o_ptr + ((b * lq + offs_m[:, None]) * hq + h) * HEAD_DIM + offs_d[None, :],
        (acc * inv[:, None]).to(o_ptr.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )
    lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    tl.store(lse_ptr + pid_bh.to(tl.int64) * lq + offs_m, lse, mask=m_ok)


@triton.jit
def _probabilities(q, kt, lse, offs_m, offs_n, m_ok, n_ok, mask_ptr, b, lk, shift, scale_log2,
                   HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """P (BLOCK_M, BLOCK_N) recomputed from the saved base-2 log-sum-exp; 0 where not visible."""
    s = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2
    visible = n_ok[None, :] & m_ok[:, None] & (lse > float("-inf"))[:, None]
    if HAS_MASK:
        pad = tl.load(mask_ptr + b * lk + offs_n, mask=n_ok, other=1)
        visible = visible & (pad == 0)[None, :]
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= shift + offs_m[:, None])
    lse_use = tl.where(lse > float("-inf"), lse, 0.0)
    return tl.where(visible, tl.exp2(s - lse_use[:, None]), 0.0)


@triton.jit
def _load_kv(k_ptr, v_ptr, b, hk, offs_n, offs_d, kv_mask, skb, skl, skh, svb, svl, svh):
    """The (BLOCK_N, BLOCK_D) K and V tiles of kv head ``hk`` (zeros outside ``kv_mask``)."""
    k = tl.load(k_ptr + b * skb + hk * skh + offs_n[:, None] * skl + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + b * svb + hk * svh + offs_n[:, None] * svl + offs_d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _load_query_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, b, h, offs_m, offs_d, m_ok, qd_mask, sqb, sql, sqh, lq, hq,
                     HEAD_DIM: tl.constexpr):  # fmt: skip
    """What the backward needs of BLOCK_M query rows of head ``h``: q, dO (contiguous), and the
    rows' saved log-sum-exp and delta (-inf and 0 past Lq)."""
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(do_ptr + ((b * lq + offs_m[:, None]) * hq + h) * HEAD_DIM + offs_d[None, :], mask=qd_mask, other=0.0)
    row = (b * hq + h) * lq + offs_m
    lse = tl.load(lse_ptr + row, mask=m_ok, other=float("-inf"))
    delta = tl.load(delta_ptr + row, mask=m_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def prefusion_attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
    lq, lk, hq, hkv, scale, scale_log2,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dK, dV of BLOCK_N keys of one kv head, summed over every query head of its GQA group.
    Grid (cdiv(Lk, BLOCK_N), B * Hkv). q, dO are (B, Lq, Hq, d) (dO contiguous); lse, delta
    (B, Hq, Lq); dk, dv contiguous (B, Lk, Hkv, d)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // hkv).to(tl.int64)
    hk = pid_bh % hkv
    group = hq // hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < lk
    d_ok = offs_d < HEAD_DIM
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k, v = _load_kv(k_ptr, v_ptr, b, hk, offs_n, offs_d, kv_mask, skb, skl, skh, svb, svl, svh)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    shift = lk - lq
    start_m = 0
    if CAUSAL:  # queries before position pid_n * BLOCK_N see none of these keys
        start_m = tl.maximum(pid_n * BLOCK_N - shift, 0) // BLOCK_M * BLOCK_M
    for g in range(0, group):
        h = hk * group + g
        for m0 in range(start_m, lq, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_ok = offs_m < lq
            qd_mask = m_ok[:, None] & d_ok[None, :]
            q, do, lse, delta = _load_query_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, b, h, offs_m, offs_d, m_ok, qd_mask,
                                                 sqb, sql, sqh, lq, hq, HEAD_DIM)  # fmt: skip
            p = _probabilities(q, tl.trans(k), lse, offs_m, offs_n, m_ok, n_ok, mask_ptr, b, lk, shift, scale_log2,
                               HAS_MASK, CAUSAL, DOT_PRECISION)  # fmt: skip
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = tl.where(p == 0, 0.0, p * (dp - delta[:, None]))  # 0 * NaN: dP of a NaN V past the horizon
            if CAUSAL:  # dS is 0 where these keys are past a row's horizon, and that row's q may be NaN
                if m0 + shift < (pid_n + 1) * BLOCK_N - 1:
                    q, dk = _past_horizon(q, dk, offs_m, offs_n, shift, False)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    if HAS_MASK:  # a padded key's gradients are 0, even where a NaN q row meets its dS = 0
        keep = (tl.load(mask_ptr + b * lk + offs_n, mask=n_ok, other=1) == 0)[:, None]
        dk = tl.where(keep, dk, 0.0)
        dv = tl.where(keep, dv, 0.0)
    out = ((b * lk + offs_n[:, None]) * hkv + hk) * HEAD_DIM + offs_d[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def prefusion_attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
    lq, lk, hq, group, scale, scale_log2,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ of BLOCK_M query rows of one head. Grid (cdiv(Lq, BLOCK_M), B * Hq); dq contiguous."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // hq).to(tl.int64)
    h = pid_bh % hq
    hk = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < lq
    d_ok = offs_d < HEAD_DIM
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q, do, lse, delta = _load_query_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, b, h, offs_m, offs_d, m_ok, qd_mask,
                                         sqb, sql, sqh, lq, hq, HEAD_DIM)  # fmt: skip
    shift = lk - lq
    hi = lk
    if CAUSAL:
        hi = tl.minimum(lk, shift + (pid_m + 1) * BLOCK_M)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < lk
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k, v = _load_kv(k_ptr, v_ptr, b, hk, offs_n, offs_d, kv_mask, skb, skl, skh, svb, svl, svh)
        p = _probabilities(q, tl.trans(k), lse, offs_m, offs_n, m_ok, n_ok, mask_ptr, b, lk, shift, scale_log2,
                           HAS_MASK, CAUSAL, DOT_PRECISION)  # fmt: skip
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = tl.where(p == 0, 0.0, p * (dp - delta[:, None]))  # 0 * NaN: dP of a NaN V past the horizon
        if CAUSAL:  # dS is 0 past the horizon, where a K that later rows see may be NaN
            if n0 + BLOCK_N - 1 > shift + pid_m * BLOCK_M:
                k, dq = _past_horizon(k, dq, offs_n, offs_m, shift, True)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    tl.store(dq_ptr + ((b * lq + offs_m[:, None]) * hq + h) * HEAD_DIM + offs_d[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=qd_mask)  # fmt: skip


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _zero_padded(t: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """``t`` (B, Lk, H, d) with the padded keys' rows zeroed, so that whatever a padded slot
    holds (NaN, inf) never reaches P @ V (0 * NaN) or the gradients. On the host, one extra pass
    over t: masking the kernels' tile loads instead costs the fp16 forward 24 bytes of register
    spill at head dims 80-128 on sm_80 (ptxas, AOT_SPECS), which the AOT check refuses."""
    return t.masked_fill(key_padding_mask.view(*key_padding_mask.shape, 1, 1), 0.0)


SPLIT_BLOCK_M = 16  # few queries: 16-row blocks, the tl.dot minimum


def _config(split: bool, dtype: torch.dtype) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_N, num_warps. Chosen from ahead-of-time compiles for sm_80 and sm_90 as
    the largest tiles with no register spills for head dims 64-128 (AOT_SPECS checks them):
    fp32 (IEEE dots, no tensor cores) needs much smaller tiles than fp16/bf16."""
    if dtype == torch.float32:
        return (SPLIT_BLOCK_M, 16, 4) if split else (32, 16, 8)
    return (SPLIT_BLOCK_M, 32, 4) if split else (64, 32, 8)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: pretend an H100 so the split path is chosen as on one


def choose_splits(b: int, hq: int, lq: int, lk: int, block_m: int, block_n: int, device: torch.device) -> int:
    """Key slices per query block: enough programs to fill the GPU twice when few query blocks
    exist, each slice at least 4 key tiles long."""
    programs = b * hq * triton.cdiv(lq, block_m)
    target = 2 * _num_sms(device)
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), lk // (4 * block_n)))


def batch_chunk(b: int, heads: int) -> int:
    """Samples per launch: the kernels put (sample, head) pairs on grid axis y, which takes
    65,535 blocks on every GPU, so a larger batch (2,048 frames x 32 heads is 65,536 pairs) runs
    as several launches over batch slices (the kernels' program order is kept: it decides
    their register allocation, checked spill-free by the AOT compile)."""
    return max(1, min(b, MAX_GRID[1] // heads))


def _batch_slices(b: int, chunk: int) -> list[slice]:
    return [slice(b0, min(b, b0 + chunk)) for b0 in range(0, b, chunk)]


def forward_plan(b: int, lq: int, lk: int, hq: int, dtype: torch.dtype, splits: int, device: torch.device) -> dict:
    """Tiles, batch chunk, key split and grids of one forward launch (pure: the tests check the
    grids of the largest shapes against the GPU's limits without a GPU). ``splits`` 0 = choose."""
    chunk = batch_chunk(b, hq)
    if splits <= 0:
        _, block_n, _ = _config(True, dtype)
        splits = choose_splits(chunk, hq, lq, lk, SPLIT_BLOCK_M, block_n, device)
    block_m, block_n, warps = _config(splits > 1, dtype)
    keys_per_split = triton.cdiv(triton.cdiv(lk, splits), block_n) * block_n
    splits = triton.cdiv(lk, keys_per_split)
    grids = {"prefusion_attn_fwd_kernel": (triton.cdiv(lq, block_m), chunk * hq, splits)}
    if splits > 1:
        grids["prefusion_attn_combine_kernel"] = (triton.cdiv(lq, SPLIT_BLOCK_M), chunk * hq)
    grids = {name: check_grid(name, g) for name, g in grids.items()}
    return dict(block_m=block_m, block_n=block_n, warps=warps, splits=splits, keys_per_split=keys_per_split,
                batch_chunk=chunk, grids=grids)  # fmt: skip


def attention_forward(q, k, v, causal: bool, key_padding_mask, scale: float, splits: int = 0):
    """Launch the forward (the op ``lmini::prefusion_attention_triton`` in triton_op.py); returns
    out (B, Lq, Hq, d) and the base-2 log-sum-exp (B, Hq, Lq) of the scaled scores (-inf for
    rows with no visible key). ``splits`` 0 = choose."""
    q, k, v = _inner_contiguous(q), _inner_contiguous(k), _inner_contiguous(v)
    b, lq, hq, d = q.shape
    out = new_output((b, lq, hq, d), q.dtype, q.device)
    lse = torch.empty((b, hq, lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    plan = forward_plan(b, lq, k.shape[1], hq, q.dtype, splits, q.device)
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.contiguous().view(torch.uint8)
        v = _zero_padded(v, key_padding_mask)
    for sl in _batch_slices(b, plan["batch_chunk"]):  # views: each launch writes its slice of out and lse
        _forward_launch(q[sl], k[sl], v[sl], None if mask is None else mask[sl], out[sl], lse[sl], causal, scale, plan)
    return out, lse


def _forward_launch(q, k, v, mask, out, lse, causal: bool, scale: float, plan: dict) -> None:
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    splits, grids = plan["splits"], plan["grids"]
    split = splits > 1
    ws_o = torch.empty((b * hq, splits, lq, d) if split else (1,), dtype=torch.float32, device=q.device)
    ws_ml = torch.empty((b * hq, splits, 2, lq) if split else (1,), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(d)
    grid = (grids["prefusion_attn_fwd_kernel"][0], b * hq, splits)  # the last chunk may be smaller
    prefusion_attn_fwd_kernel[grid](
        q, k, v, q if mask is None else mask, out, lse, ws_o, ws_ml,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        lq, lk, hq, hq // hkv, plan["keys_per_split"], scale * LOG2E,
        HAS_MASK=mask is not None, CAUSAL=causal, SPLIT=split, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_M=plan["block_m"], BLOCK_N=plan["block_n"], DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=plan["warps"], num_stages=2,
    )  # fmt: skip
    if split:
        prefusion_attn_combine_kernel[(grids["prefusion_attn_combine_kernel"][0], b * hq)](
            ws_o, ws_ml, out, lse, lq, hq, splits, HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=SPLIT_BLOCK_M, num_warps=4
        )


def _bwd_config(dtype: torch.dtype, block_d: int) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_N, num_warps of the backward kernels (no spills on sm_80/sm_90, AOT_SPECS).

    fp32 at BLOCK_D <= 64 takes 4 warps and at BLOCK_D = 128 8 warps: since the dkdv kernel's
    tiles that cross the causal horizon zero a non-finite q (``_past_horizon``), the other
    choice spills there (Triton 3.8: 24 bytes at d = 64 on sm_90, 60 at d = 128 on sm_80).
    ``.ci/compat`` compiles every spec with Triton 3.6 for sm_90 as well."""
    if dtype == torch.float32:
        return (16, 16, 4 if block_d <= 64 else 8)
    return (32, 32, 8)


def backward_grids(b: int, lq: int, lk: int, hq: int, hkv: int, dtype: torch.dtype) -> dict[str, tuple[int, ...]]:
    """Grids of the two backward kernels for one batch chunk (pure, checked against the GPU's limits)."""
    block_m, block_n, _ = _bwd_config(dtype, 64)  # the blocks do not depend on the head dim
    chunk = batch_chunk(b, hq)
    grids = {
        "prefusion_attn_bwd_dkdv_kernel": (triton.cdiv(lk, block_n), chunk * hkv),
        "prefusion_attn_bwd_dq_kernel": (triton.cdiv(lq, block_m), chunk * hq),
    }
    return {name: check_grid(name, g) for name, g in grids.items()}


def attention_backward(grad_out, q, k, v, key_padding_mask, out, lse, causal: bool, scale: float):
    """dq, dk, dv of the forward for the output gradient ``grad_out`` (Triton kernels; the op
    ``lmini::prefusion_attention_triton_bwd`` in triton_op.py)."""
    q, k, v = _inner_contiguous(q), _inner_contiguous(k), _inner_contiguous(v)
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    do = grad_out.contiguous().to(q.dtype)
    # delta = rowsum(dO * O): a memory-bound pass, left to PyTorch
    delta = (do.float() * out.float()).sum(-1).transpose(1, 2).contiguous()
    dq = torch.empty((b, lq, hq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, lk, hkv, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((b, lk, hkv, d), dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.contiguous().view(torch.uint8)
        k, v = _zero_padded(k, key_padding_mask), _zero_padded(v, key_padding_mask)
    block_m, block_n, warps = _bwd_config(q.dtype, triton.next_power_of_2(d))
    meta = dict(
        HAS_MASK=mask is not None, CAUSAL=causal, HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d),
        BLOCK_M=block_m, BLOCK_N=block_n, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps, num_stages=1,
    )  # fmt: skip
    grids = backward_grids(b, lq, lk, hq, hkv, q.dtype)
    for sl in _batch_slices(b, batch_chunk(b, hq)):
        qs, ks, vs = q[sl], k[sl], v[sl]
        ms = qs if mask is None else mask[sl]
        nb = qs.shape[0]
        strides = (qs.stride(0), qs.stride(1), qs.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
                   vs.stride(0), vs.stride(1), vs.stride(2))  # fmt: skip
        prefusion_attn_bwd_dkdv_kernel[(grids["prefusion_attn_bwd_dkdv_kernel"][0], nb * hkv)](
            qs, ks, vs, ms, do[sl], lse[sl], delta[sl], dk[sl], dv[sl], *strides, lq, lk, hq, hkv, scale,
            scale * LOG2E, **meta,
        )  # fmt: skip
        prefusion_attn_bwd_dq_kernel[(grids["prefusion_attn_bwd_dq_kernel"][0], nb * hq)](
            qs, ks, vs, ms, do[sl], lse[sl], delta[sl], dq[sl], *strides, lq, lk, hq, hq // hkv, scale,
            scale * LOG2E, **meta,
        )  # fmt: skip
    return dq, dk, dv


def _fwd_signature(dt: str) -> dict[str, str]:
    sig = {name: f"*{dt}" for name in ("q_ptr", "k_ptr", "v_ptr")}
    sig.update({"mask_ptr": "*u8", "o_ptr": f"*{dt}", "lse_ptr": "*fp32", "ws_o_ptr": "*fp32", "ws_ml_ptr": "*fp32"})
    sig.update({s: "i64" for s in ("sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh")})
    sig.update({"lq": "i32", "lk": "i32", "hq": "i32", "group": "i32", "keys_per_split": "i32", "scale_log2": "fp32"})
    return sig


AOT_SPECS = [
    AotSpec(
        name=f"prefusion_attn_fwd[{dt},d={d},split={split}]",
        fn=prefusion_attn_fwd_kernel,
        signature=_fwd_signature(dt),
        constexprs={
            "HAS_MASK": True,
            "CAUSAL": True,
            "SPLIT": split,
            "HEAD_DIM": d,
            "BLOCK_D": triton.next_power_of_2(d),
            "BLOCK_M": _config(split, tdt)[0],
            "BLOCK_N": _config(split, tdt)[1],
            "DOT_PRECISION": "ieee" if dt == "fp32" else "tf32",
        },
        num_warps=_config(split, tdt)[2],
        num_stages=2,
    )
    for dt, tdt in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32))
    for d in (64, 80, 96, 128)
    for split in (False, True)
] + [
    AotSpec(
        name=f"prefusion_attn_combine[{dt},d={d}]",
        fn=prefusion_attn_combine_kernel,
        signature={"ws_o_ptr": "*fp32", "ws_ml_ptr": "*fp32", "o_ptr": f"*{dt}", "lse_ptr": "*fp32"}
        | {"lq": "i32", "hq": "i32", "nsplit": "i32"},
        constexprs={"HEAD_DIM": d, "BLOCK_D": triton.next_power_of_2(d), "BLOCK_M": SPLIT_BLOCK_M},
        num_warps=4,
    )
    for dt in ("fp16", "bf16", "fp32")
    for d in (64, 128)
]


def _bwd_signature(dt: str, kernel: str) -> dict[str, str]:
    sig = {name: f"*{dt}" for name in ("q_ptr", "k_ptr", "v_ptr")}
    sig.update({"mask_ptr": "*u8", "do_ptr": f"*{dt}", "lse_ptr": "*fp32", "delta_ptr": "*fp32"})
    sig.update({"dk_ptr": f"*{dt}", "dv_ptr": f"*{dt}"} if kernel == "dkdv" else {"dq_ptr": f"*{dt}"})
    sig.update({s: "i64" for s in ("sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh")})
    sig.update({"lq": "i32", "lk": "i32", "hq": "i32", ("hkv" if kernel == "dkdv" else "group"): "i32"})
    sig.update({"scale": "fp32", "scale_log2": "fp32"})
    return sig


AOT_SPECS += [
    AotSpec(
        name=f"prefusion_attn_bwd_{kernel}[{dt},d={d}]",
        fn=prefusion_attn_bwd_dkdv_kernel if kernel == "dkdv" else prefusion_attn_bwd_dq_kernel,
        signature=_bwd_signature(dt, kernel),
        constexprs={
            "HAS_MASK": True,
            "CAUSAL": True,
            "HEAD_DIM": d,
            "BLOCK_D": triton.next_power_of_2(d),
            "BLOCK_M": _bwd_config(tdt, triton.next_power_of_2(d))[0],
            "BLOCK_N": _bwd_config(tdt, triton.next_power_of_2(d))[1],
            "DOT_PRECISION": "ieee" if dt == "fp32" else "tf32",
        },
        num_warps=_bwd_config(tdt, triton.next_power_of_2(d))[2],
        num_stages=1,
    )
    for dt, tdt in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32))
    for d in (64, 128)
    for kernel in ("dkdv", "dq")
]
