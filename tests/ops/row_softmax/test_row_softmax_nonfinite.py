"""row_softmax's contract on non-finite input, every backend against the float64 reference
(property-based: hypothesis draws shapes, scales of either sign, dtypes and injected NaN/inf).

The contract (row_softmax's docstring): as ``torch.softmax(scale * x)`` in float32, so a NaN
logit or a +inf one (inf - inf) makes its row NaN, except that a row whose logits are all -inf
gives zeros. Column counts past 4096 cross the Triton kernel's column tile.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from utils import assert_close

import lmini_kernels as lk
from lmini_kernels.ops.row_softmax.reference import row_softmax_reference

DTYPES = {
    "reference": (torch.float32, torch.float16, torch.bfloat16),
    "cpu": (torch.float32, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}
ROW_KINDS = ("finite", "nan", "posinf", "some_neginf", "all_neginf", "huge")


def make_row(kind: str, cols: int, gen: torch.Generator) -> torch.Tensor:
    row = torch.randn(cols, generator=gen, dtype=torch.float64) * 3
    at = int(torch.randint(cols, (1,), generator=gen))
    if kind == "nan":
        row[at] = float("nan")
    elif kind == "posinf":
        row[at] = float("inf")
    elif kind == "some_neginf":
        row[torch.rand(cols, generator=gen) < 0.5] = float("-inf")
    elif kind == "all_neginf":
        row[:] = float("-inf")
    elif kind == "huge":  # large but finite in every dtype's float32 math
        row *= 1e4
    return row


def check_contract(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Same NaN pattern; every other entry within the dtype's tolerance, row by row."""
    assert torch.equal(out.isnan(), ref.isnan()), "NaN pattern differs from the reference"
    finite_rows = ~ref.isnan().any(-1)
    for r in finite_rows.nonzero().flatten().tolist():
        assert_close(out[r], ref[r], dtype=out.dtype)


@pytest.mark.parametrize("backend", sorted(DTYPES))
@given(
    kinds=st.lists(st.sampled_from(ROW_KINDS), min_size=1, max_size=4),
    cols=st.sampled_from((1, 2, 7, 37, 130, 4099)),
    scale=st.sampled_from((1.0, 0.7, -0.5, -3.0, 1e-3, 0.0, 20.0)),
    dtype_index=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_non_finite_rows_follow_the_contract(backend, kinds, cols, scale, dtype_index, seed):
    dtype = DTYPES[backend][dtype_index % len(DTYPES[backend])]
    gen = torch.Generator().manual_seed(seed)
    x = torch.stack([make_row(k, cols, gen) for k in kinds]).to(dtype)
    out = lk.row_softmax(x, scale, backend=backend)
    ref = row_softmax_reference(x.double(), scale)
    assert out.dtype == dtype and out.shape == x.shape
    check_contract(out, ref)


def test_reference_contract_by_hand():
    """The reference itself, on rows whose answer is known without torch.softmax."""
    x = torch.tensor([[float("-inf")] * 3, [0.0, float("nan"), 1.0], [0.0, float("inf"), 1.0], [0.0, 0.0, 0.0]])
    y = row_softmax_reference(x, 1.0)
    assert torch.equal(y[0], torch.zeros(3))
    assert y[1].isnan().all() and y[2].isnan().all()
    torch.testing.assert_close(y[3], torch.full((3,), 1 / 3))
    neg = row_softmax_reference(torch.tensor([[1.0, 2.0]]), -1.0)
    torch.testing.assert_close(neg, torch.softmax(torch.tensor([[-1.0, -2.0]]), -1))


@pytest.mark.parametrize("backend", sorted(DTYPES))
def test_zero_columns_and_empty_batch(backend):
    for shape in ((3, 0), (0, 5), (2, 0, 4)):
        x = torch.randn(*shape)
        out = lk.row_softmax(x, 1.0, backend=backend)
        assert out.shape == x.shape
