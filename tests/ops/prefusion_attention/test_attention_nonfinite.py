"""prefusion_attention's contract on non-finite and masked data, every backend (property-based:
hypothesis draws shapes, GQA groups, dtypes, masks and where the NaN/inf go).

The contract (the op's docstring): a key hidden by the padding mask is never read, so whatever
its K and V hold (NaN, inf) leaves every output as it is with finite values there; a NaN in what
a query sees (its q, a visible key's K, the scale) makes that query's output row NaN; a query
with no visible key gives zeros.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from utils import assert_close

import lmini_kernels as lk
from lmini_kernels.ops.prefusion_attention.reference import prefusion_attention_reference, visible_mask

DTYPES = {
    "reference": (torch.float32, torch.float16, torch.bfloat16),
    "cpu": (torch.float32, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}
GARBAGE = (float("nan"), float("inf"), float("-inf"), 6e4)  # 6e4: near fp16's largest
D = 64  # a head dim every kernel takes

shapes = st.tuples(
    st.integers(1, 2),  # B
    st.integers(1, 9),  # Lq
    st.integers(0, 40),  # Lk - Lq
    st.sampled_from(((1, 1), (2, 1), (4, 2))),  # (Hq, Hkv)
)


def inputs(shape, dtype, seed):
    b, lq, extra, (hq, hkv) = shape
    lk = lq + extra
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, hq, D, generator=gen).to(dtype)
    k = torch.randn(b, lk, hkv, D, generator=gen).to(dtype)
    v = torch.randn(b, lk, hkv, D, generator=gen).to(dtype)
    mask = torch.rand(b, lk, generator=gen) < 0.4
    return q, k, v, mask, gen


def run(backend, q, k, v, mask, causal, scale=None):
    return lk.prefusion_attention(q, k, v, causal=causal, key_padding_mask=mask, softmax_scale=scale, backend=backend)


def reference(q, k, v, mask, causal, scale=None):
    return prefusion_attention_reference(q.double(), k.double(), v.double(), causal, mask, scale)


@pytest.mark.parametrize("backend", sorted(DTYPES))
@given(shape=shapes, causal=st.booleans(), dtype_index=st.integers(0, 2), garbage=st.sampled_from(GARBAGE),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_padded_keys_are_never_read(backend, shape, causal, dtype_index, garbage, seed):
    dtype = DTYPES[backend][dtype_index % len(DTYPES[backend])]
    q, k, v, mask, _ = inputs(shape, dtype, seed)
    want = reference(q, k, v, mask, causal)  # finite values in the padded slots
    hidden = mask.view(*mask.shape, 1, 1).expand_as(k)
    k_bad = k.masked_fill(hidden, garbage)
    v_bad = v.masked_fill(hidden, garbage)
    out = run(backend, q, k_bad, v_bad, mask, causal)
    assert not out.isnan().any() and out.isfinite().all()
    assert_close(out, want, dtype=dtype)
    seen = visible_mask(q.shape[1], k.shape[1], causal, mask, q.device).any(-1)  # (B, 1, Lq)
    blind = ~seen.squeeze(1)  # queries with no visible key: zeros
    assert torch.equal(out[blind].float(), torch.zeros_like(out[blind].float()))


@pytest.mark.parametrize("backend", sorted(DTYPES))
@given(shape=shapes, causal=st.booleans(), where=st.sampled_from(("q", "k", "scale")), seed=st.integers(0, 2**31 - 1))
def test_nan_in_what_a_query_sees_makes_its_row_nan(backend, shape, causal, where, seed):
    q, k, v, mask, gen = inputs(shape, torch.float32, seed)
    b, lq, hq, _ = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    vis = visible_mask(lq, lk, causal, mask, q.device).expand(b, 1, lq, lk)[:, 0]  # (B, Lq, Lk)
    expect = torch.zeros(b, lq, hq, dtype=torch.bool)  # rows that must come out NaN
    scale = None
    bi, i, h = (int(torch.randint(n, (1,), generator=gen)) for n in (b, lq, hq))
    if where == "q":
        q[bi, i, h, 0] = float("nan")
        expect[bi, i, h] = vis[bi, i].any()
    elif where == "k":
        j = int(torch.randint(lk, (1,), generator=gen))
        mask[bi, j] = False  # key j of sample bi is visible to the queries whose horizon reaches it
        vis = visible_mask(lq, lk, causal, mask, q.device).expand(b, 1, lq, lk)[:, 0]
        hk = h % hkv
        k[bi, j, hk, 0] = float("nan")
        group = hq // hkv
        for hh in range(hk * group, (hk + 1) * group):
            expect[bi, :, hh] = vis[bi, :, j]
    else:
        scale = float("nan")
        expect[:] = vis.any(-1).unsqueeze(-1)
    out = run(backend, q, k, v, mask, causal, scale)
    rows_nan = out.isnan().any(-1)
    assert torch.equal(rows_nan, expect)
    assert out[expect].isnan().all(), "a NaN row is only partly NaN"
    clean = ~expect
    want = reference(q, k, v, mask, causal, scale)
    assert_close(out[clean], want[clean], dtype=torch.float32)


def _check_past_horizon(backend, shape, garbage, seed):
    b, lq, extra, heads = shape
    lq = max(lq, 2)  # a key past the first query's horizon exists only with two queries or more
    q, k, v, mask, gen = inputs((b, lq, extra, heads), torch.float32, seed)
    lk = k.shape[1]
    j = lk - lq + int(torch.randint(1, lq, (1,), generator=gen))  # visible to query j - (lk - lq) and later
    bi = int(torch.randint(b, (1,), generator=gen))
    mask[bi, j] = False
    want = reference(q, k, v, mask, True)
    k_bad, v_bad = k.clone(), v.clone()
    v_bad[bi, j, :, 3] = garbage
    k_bad[bi, j, :, 5] = garbage if garbage != garbage else 1e4  # a huge but finite key still hides nothing
    out = run(backend, q, k_bad, v_bad, mask, True)
    first = j - (lk - lq)  # the first query that sees key j
    before = out[bi, :first]
    assert before.isfinite().all(), "a key past the horizon reached an earlier query"
    assert_close(before, want[bi, :first], dtype=torch.float32)
    others = [i for i in range(b) if i != bi]
    assert_close(out[others], want[others], dtype=torch.float32)
    if garbage != garbage:  # NaN: every later query of the sample sees it
        assert out[bi, first:, :, 3].isnan().all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(shape=shapes, garbage=st.sampled_from(GARBAGE[:3]), seed=st.integers(0, 2**31 - 1))
def test_keys_past_the_causal_horizon_are_never_read(backend, shape, garbage, seed):
    """A non-finite V (or K) of a key that a query may not see yet (causal, not padded) leaves
    that query's row as it is; the queries that do see it get a non-finite value there."""
    _check_past_horizon(backend, shape, garbage, seed)


@pytest.mark.xfail(
    strict=True,
    reason="known gap (README, 'NaN, inf and masked data'): the Triton and CUDA kernels multiply a "
    "diagonal block's V by zero probabilities in one dot product; an exact fix needs a second "
    "accumulator or a V copy, to be measured on a GPU first",
)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_keys_past_the_causal_horizon_gpu_kernels(backend):
    """The same check on one fixed case (no property search: a known failure would make
    hypothesis shrink it for minutes)."""
    _check_past_horizon(backend, (2, 5, 7, (4, 2)), float("nan"), 1234)
