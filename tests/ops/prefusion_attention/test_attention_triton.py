"""prefusion_attention on the Triton backend, through the interpreter on CPU tensors (fp32, fp16)."""

from __future__ import annotations

import pytest
import torch
from prefusion_cases import check_against_reference, make_inputs
from utils import assert_close, randn

import lmini_kernels
from lmini_kernels import NotSupportedError
from lmini_kernels.ops.prefusion_attention.reference import prefusion_attention_reference
from lmini_kernels.ops.prefusion_attention.triton import choose_splits
from lmini_kernels.ops.prefusion_attention.triton_op import prefusion_attention_triton_op

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_head_dims_gqa_padding(dtype: torch.dtype, d: int) -> None:
    q, k, v, mask = make_inputs(2, 13, 77, 4, 2, d, dtype)
    check_against_reference("triton", q, k, v, mask)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (5, 5), (37, 37), (70, 133), (3, 20)])
def test_odd_lengths(lq: int, lk: int, causal: bool) -> None:
    q, k, v, mask = make_inputs(2, lq, lk, 2, 1, 64, pad=lk > 1)
    check_against_reference("triton", q, k, v, mask, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [2, 3, 5])
def test_split_key_path(dtype: torch.dtype, splits: int) -> None:
    """Few queries over many keys: key slices merged by the combine kernel, including slices
    that lie wholly after a query's causal end and rows with no visible key."""
    q, k, v, mask = make_inputs(2, 7, 300, 4, 2, 64, dtype)
    out = prefusion_attention_triton_op(q, k, v, True, mask, 0.125, splits)[0]
    ref = prefusion_attention_reference(q.double(), k.double(), v.double(), True, mask, 0.125)
    assert_close(out, ref, dtype=dtype)
    assert torch.equal(out[0, 0], torch.zeros_like(out[0, 0]))


def test_split_is_chosen_for_suffix_shapes() -> None:
    cpu = torch.device("cpu")
    assert choose_splits(1, 32, 44, 620, 16, 64, cpu) > 1  # text over a cached vision prefix
    assert choose_splits(1, 32, 620, 620, 64, 64, cpu) == 1  # full causal: enough programs
    q, k, v, mask = make_inputs(1, 3, 600, 2, 2, 64)
    check_against_reference("triton", q, k, v, mask)  # auto split on this shape


def test_non_contiguous_and_scale() -> None:
    q, k, v, mask = make_inputs(2, 9, 40, 4, 4, 64, scale=4.0)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    check_against_reference("triton", qt, kt, vt, mask, softmax_scale=0.2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("lq", "lk", "hq", "hkv", "d"), [(6, 70, 4, 2, 64), (37, 37, 2, 2, 80), (1, 50, 4, 1, 128)])
def test_triton_backward_matches_reference(dtype, causal, lq, lk, hq, hkv, d) -> None:
    """dq, dk (GQA: summed over the group's heads), dv of the Triton backward kernels vs the
    float64 reference's autograd, rows with no visible key included."""
    q, k, v, mask = make_inputs(2, lq, lk, hq, hkv, d, dtype)
    g = randn(*q.shape, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    lmini_kernels.prefusion_attention(*leaves, causal=causal, key_padding_mask=mask, backend="triton").backward(g)
    ref = [t.double().requires_grad_(True) for t in (q, k, v)]
    prefusion_attention_reference(*ref, causal, mask).backward(g.double())
    for got, want in zip(leaves, ref, strict=True):
        assert_close(got.grad, want.grad, dtype=dtype)


def test_opcheck_triton_op() -> None:
    q, k, v, mask = make_inputs(1, 4, 20, 2, 1, 64)
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.lmini.prefusion_attention_triton.default, (q, k, v, True, mask, 0.125, 0))
    out, lse = torch.ops.lmini.prefusion_attention_triton(q, k, v, True, mask, 0.125, 0)
    g = randn(*q.shape)
    torch.library.opcheck(
        torch.ops.lmini.prefusion_attention_triton_bwd.default,
        (g, q.detach(), k.detach(), v.detach(), mask, out.detach(), lse.detach(), True, 0.125),
    )


def test_bf16_refused_under_the_interpreter() -> None:
    q, k, v, _ = make_inputs(1, 2, 4, 2, 2, 64, torch.bfloat16, pad=False)
    with pytest.raises(NotSupportedError, match="bfloat16"):
        lmini_kernels.prefusion_attention(q, k, v, backend="triton")


def test_head_dim_refused() -> None:
    q, k, v, _ = make_inputs(1, 2, 4, 2, 2, 48, pad=False)
    with pytest.raises(NotSupportedError, match="head dim 48"):
        lmini_kernels.prefusion_attention(q, k, v, backend="triton")


def test_batches_past_grid_axis_y_run_in_chunks(monkeypatch) -> None:
    """(sample, head) pairs sit on grid axis y (65,535 blocks): a larger batch runs as several
    launches over batch slices. Shrunk here to 4 pairs per launch, so 5 samples x 2 heads take
    3 launches, forward and backward, padding and GQA included."""
    import lmini_kernels.ops.prefusion_attention.triton as tri

    monkeypatch.setattr(tri, "MAX_GRID", (2**31 - 1, 4, 65535))
    assert tri.batch_chunk(5, 2) == 2
    q, k, v, mask = make_inputs(5, 3, 40, 2, 1, 64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = lmini_kernels.prefusion_attention(*leaves, key_padding_mask=mask, backend="triton")
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref = prefusion_attention_reference(*ref_leaves, True, mask)
    assert_close(out, ref, dtype=torch.float32)
    g = randn(*q.shape)
    out.backward(g)
    ref.backward(g.double())
    for got, want in zip(leaves, ref_leaves, strict=True):
        assert_close(got.grad, want.grad, dtype=torch.float32)
