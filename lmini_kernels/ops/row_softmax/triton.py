"""Triton row softmax: one program per row, online max/sum over column tiles, then a write pass.

Grid (rows,). Bytes: two reads and one write of x; ~5 FLOPs per element: memory-bound.
Accumulation in fp32 whatever the input dtype (and bf16 is upcast at load, which is also
what keeps the interpreter exact: it computes bf16 on raw bits).
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


@triton.jit
def row_softmax_fwd_kernel(x_ptr, y_ptr, cols, x_row_stride, y_row_stride, scale, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: rows * stride can pass 2^31
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    nan = tl.zeros([BLOCK], tl.int32)
    for start in range(0, cols, BLOCK):
        mask = start + offs < cols
        # masked lanes become -inf after the scale (loading -inf and scaling would flip its sign)
        v = tl.where(mask, tl.load(x_row + start + offs, mask=mask, other=0.0).to(tl.float32) * scale, float("-inf"))
        nan = nan | (v != v).to(tl.int32)
        m_new = tl.maximum(m, v)
        alive = m_new > float("-inf")  # a lane that saw only -inf keeps s = 0, not NaN
        s = tl.where(alive, s * tl.exp(m - m_new) + tl.exp(v - m_new), 0.0)
        m = m_new
    row_max = tl.max(m, 0)
    row_sum = tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - row_max), 0.0), 0)
    # A NaN logit anywhere makes the row NaN (tl.maximum may drop NaN); +inf gives NaN through
    # inf - inf; a row of -inf only gives zeros.
    row_nan = tl.max(nan, 0) > 0
    empty = row_max == float("-inf")
    inv = 1.0 / tl.where(empty, 1.0, row_sum)
    for start in range(0, cols, BLOCK):
        mask = start + offs < cols
        v = tl.load(x_row + start + offs, mask=mask, other=0.0).to(tl.float32) * scale
        p = tl.where(row_nan, float("nan"), tl.where(empty, 0.0, tl.exp(v - row_max) * inv))
        tl.store(y_row + start + offs, p.to(y_ptr.dtype.element_ty), mask=mask)


def _block(cols: int) -> int:
    return max(16, min(triton.next_power_of_2(max(cols, 1)), 4096))


def launch(x: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * x) over the last dim with the Triton kernel (contiguous output); the
    body of the op ``lmini::row_softmax_triton`` (triton_op.py)."""
    cols = x.shape[-1] if x.dim() > 0 else 1
    x2 = x.contiguous().reshape(x.numel() // cols if cols else 0, cols)
    y = new_output(x2.shape, x2.dtype, x2.device)
    rows = x2.shape[0]
    if rows and cols:
        grid = check_grid("row_softmax_fwd_kernel", (rows,))
        row_softmax_fwd_kernel[grid](x2, y, cols, x2.stride(0), y.stride(0), scale, BLOCK=_block(cols), num_warps=4)
    return y.reshape(x.shape)


AOT_SPECS = [
    AotSpec(
        name=f"row_softmax_fwd[{dt},BLOCK={block}]",
        fn=row_softmax_fwd_kernel,
        signature={
            "x_ptr": f"*{dt}",
            "y_ptr": f"*{dt}",
            "cols": "i32",
            "x_row_stride": "i64",
            "y_row_stride": "i64",
            "scale": "fp32",
        },
        constexprs={"BLOCK": block},
        num_warps=4,
    )
    for dt in ("fp32", "fp16", "bf16")
    for block in (1024, 4096)
]
