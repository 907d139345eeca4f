"""prefusion_attention's AMX path on the CPU (bf16 through oneDNN brgemm, csrc/ops/prefusion_attention/cpu_amx.h),
forced with LMINI_PREFUSION_CPU_PATH=amx, against the float64 reference row by row; skipped, saying so,
where the CPU (or torch's oneDNN) has no AMX bf16: there the vector path's tests (test_attention_cpu.py)
cover bf16."""

from __future__ import annotations

import pytest
import torch
from prefusion_cases import make_inputs
from utils import TOLERANCE, rel_error

import lmini_kernels
from lmini_kernels.ops.prefusion_attention.reference import prefusion_attention_reference

BF16 = torch.bfloat16


@pytest.fixture
def amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the AMX path; skip where it cannot run (the op refuses =amx without AMX)."""
    monkeypatch.setenv("LMINI_PREFUSION_CPU_PATH", "amx")
    monkeypatch.delenv("LMINI_CPU_ISA", raising=False)
    q = torch.zeros(1, 1, 1, 64, dtype=BF16)
    try:
        lmini_kernels.prefusion_attention(q, q, q, backend="cpu")
    except RuntimeError as e:
        if "no AMX" not in str(e):
            raise
        pytest.skip("this CPU (or torch's oneDNN) has no AMX bf16: the AMX path cannot run here")


def run(q, k, v, mask, causal=True, scale=None):
    return lmini_kernels.prefusion_attention(
        q, k, v, causal=causal, key_padding_mask=mask, softmax_scale=scale, backend="cpu"
    )


def reference(q, k, v, mask, causal=True, scale=None):
    return prefusion_attention_reference(q.double(), k.double(), v.double(), causal, mask, scale)


def assert_rows_close(out: torch.Tensor, ref: torch.Tensor, factor: float = 1.0) -> None:
    """Every output row (b, i, h) within the bf16 tolerance of its reference row (a row of
    zeros, a query with no visible key, must be zeros)."""
    o, r = out.double().reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
    tol = factor * TOLERANCE[BF16]
    for n in range(o.shape[0]):
        err = rel_error(o[n], r[n])
        assert err <= tol, f"row {n} of {tuple(out.shape[:-1])}: relative error {err:.3e} > {tol:.1e}"


CASES = [  # (B, Lq, Lk, Hq, Hkv, d): lengths off the 64-key tile and the 64-row block
    (2, 13, 77, 8, 2, 64),
    (2, 13, 77, 8, 2, 80),
    (1, 70, 133, 4, 4, 128),
    (3, 37, 37, 4, 4, 96),
    (1, 150, 200, 2, 1, 64),  # several query blocks per task, GQA 2
    (1, 3, 70, 32, 1, 64),  # the group wider than a block: rows are every head of one query
    (2, 1, 1, 2, 2, 128),
    (1, 5, 300, 6, 3, 24),  # d = 24: the scalar tail of the V packing
]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_amx_against_reference(amx, shape, causal: bool) -> None:
    b, lq, lk, hq, hkv, d = shape
    q, k, v, mask = make_inputs(b, lq, lk, hq, hkv, d, BF16, pad=lk > 1)
    out = run(q, k, v, mask, causal)
    assert out.dtype == BF16 and out.shape == q.shape
    assert_rows_close(out, reference(q, k, v, mask, causal))


def test_amx_no_mask_and_scale(amx) -> None:
    q, k, v, _ = make_inputs(1, 44, 620, 8, 8, 128, BF16, pad=False, scale=3.0)
    assert_rows_close(run(q, k, v, None, True, 0.2), reference(q, k, v, None, True, 0.2))


def test_amx_many_heads_split_by_query_tiles(amx) -> None:
    """One batch, one KV head: the head's query tiles are split over several tasks."""
    q, k, v, mask = make_inputs(1, 300, 310, 1, 1, 64, BF16)
    assert_rows_close(run(q, k, v, mask), reference(q, k, v, mask))


def test_amx_close_to_vector_path(amx, monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, mask = make_inputs(2, 45, 130, 4, 2, 128, BF16)
    got = run(q, k, v, mask)
    monkeypatch.setenv("LMINI_PREFUSION_CPU_PATH", "vector")
    want = run(q, k, v, mask)
    assert_rows_close(got, want.double())


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("causal", [True, False])
def test_amx_padded_keys_are_never_read(amx, garbage: float, causal: bool) -> None:
    q, k, v, mask = make_inputs(2, 70, 140, 4, 2, 80, BF16)
    want = reference(q, k, v, mask, causal)
    hidden = mask.view(*mask.shape, 1, 1).expand_as(k)
    out = run(q, k.masked_fill(hidden, garbage), v.masked_fill(hidden, garbage), mask, causal)
    assert out.isfinite().all()
    assert_rows_close(out, want)


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(("lq", "lk", "j"), [(5, 7, 4), (20, 150, 140), (130, 140, 75), (44, 620, 600)])
def test_amx_keys_past_the_causal_horizon_are_never_read(amx, garbage: float, lq: int, lk: int, j: int) -> None:
    """A non-finite V (and K) of key j leaves the rows of the queries before it as they are
    (0 * NaN in P V must not happen); the queries that see it get a non-finite value there."""
    q, k, v, mask = make_inputs(2, lq, lk, 4, 2, 64, BF16, pad=False)
    mask = torch.zeros(2, lk, dtype=torch.bool)
    want = reference(q, k, v, mask)
    k_bad, v_bad = k.clone(), v.clone()
    v_bad[1, j, :, 3] = garbage
    k_bad[1, j, :, 5] = garbage if garbage != garbage else 1e4
    out = run(q, k_bad, v_bad, mask)
    first = j - (lk - lq)  # the first query that sees key j
    assert out[1, :first].isfinite().all(), "a key past the horizon reached an earlier query"
    assert_rows_close(out[1, :first], want[1, :first])
    assert_rows_close(out[0], want[0])
    if garbage != garbage:
        assert out[1, first:, :, 3].isnan().all()


def test_amx_nan_query_row(amx) -> None:
    q, k, v, mask = make_inputs(1, 9, 100, 4, 2, 64, BF16)
    q[0, 5, 1, 0] = float("nan")
    out = run(q, k, v, mask)
    assert out[0, 5, 1].isnan().all()
    rows = torch.ones(9, 4, dtype=torch.bool)
    rows[5, 1] = False
    assert out[0][rows].isfinite().all()


def test_bad_path_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMINI_PREFUSION_CPU_PATH", "gpu")
    q = torch.zeros(1, 1, 1, 64)
    with pytest.raises(RuntimeError, match="LMINI_PREFUSION_CPU_PATH"):
        lmini_kernels.prefusion_attention(q, q, q, backend="cpu")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", CASES[:5], ids=lambda s: "x".join(map(str, s)))
def test_vector_path_bf16(monkeypatch: pytest.MonkeyPatch, shape, causal: bool) -> None:
    """LMINI_PREFUSION_CPU_PATH=vector keeps the tile body's bf16 path (vdpbf16ps where the CPU has
    it) tested on a CPU whose default for bf16 is the AMX path."""
    monkeypatch.setenv("LMINI_PREFUSION_CPU_PATH", "vector")
    b, lq, lk, hq, hkv, d = shape
    q, k, v, mask = make_inputs(b, lq, lk, hq, hkv, d, BF16)
    assert_rows_close(run(q, k, v, mask, causal), reference(q, k, v, mask, causal))
