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
from lmini_kernels.ops.prefusion_attention.reference import (
    prefusion_attention_backward,
    prefusion_attention_reference,
    visible_mask,
)

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


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda"])
@given(shape=shapes, garbage=st.sampled_from(GARBAGE[:3]), seed=st.integers(0, 2**31 - 1))
def test_keys_past_the_causal_horizon_are_never_read(backend, shape, garbage, seed):
    """A non-finite V (or K) of a key that a query may not see yet (causal, not padded) leaves
    that query's row as it is; the queries that do see it get a non-finite value there."""
    _check_past_horizon(backend, shape, garbage, seed)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("case", [((2, 5, 7, (4, 2)), 1234), ((1, 20, 150, (2, 1)), 7)])
@pytest.mark.parametrize("garbage", GARBAGE[:3])
def test_keys_past_the_causal_horizon_gpu_kernels(backend, case, garbage):
    """The same on fixed cases (a known failure would make hypothesis shrink it for minutes),
    one with several query blocks and (Triton) key splits: Lq = 20 > 16 query rows a block,
    Lk = 170 keys in 2 split programs, so the horizon crosses tiles of both."""
    shape, seed = case
    _check_past_horizon(backend, shape, garbage, seed)


def _grads(backend, q, k, v, mask, grad):
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = lk.prefusion_attention(*leaves, causal=True, key_padding_mask=mask, backend=backend)
    return torch.autograd.grad(out, leaves, grad)


_REFERENCE_MATH_K_GAP = pytest.mark.xfail(
    strict=True,
    reason="known gap: the backward of the reference, cpu and cuda backends is autograd through the "
    "reference's einsum, whose dQ = dS K multiplies dS = 0 of a pair past the horizon by a NaN K",
)
GRAD_CASES = [
    pytest.param(
        backend,
        where,
        marks=[_REFERENCE_MATH_K_GAP] if backend != "triton" and where == "k" else [],
    )  # fmt: skip
    for backend in sorted(DTYPES)
    for where in ("v", "k")
]


@pytest.mark.parametrize(("backend", "where"), GRAD_CASES)
@pytest.mark.parametrize("shape", [(2, 5, 7, (4, 2)), (1, 40, 3, (2, 1))])
def test_gradients_past_the_causal_horizon(backend, where, shape):
    """Backward with a NaN in V (or K) of a key past some queries' horizon: the gradients that
    do not depend on that key (dq of the queries before it, every gradient of the other
    samples) equal those of the finite inputs, and a padded key's dk, dv are 0. (The Triton
    kernels took dP = dO V^T = NaN into P (dP - delta) and dS = 0 times K = NaN into dQ.)"""
    b, lq, extra, heads = shape
    q, k, v, mask, gen = inputs((b, lq, extra, heads), torch.float32, 1234 + lq)
    lk_ = k.shape[1]
    j = lk_ - lq + lq // 2  # first seen by query lq // 2
    bi = b - 1
    mask[bi, j] = False
    grad = torch.randn(q.shape, generator=gen)
    want = prefusion_attention_backward(grad, q.double(), k.double(), v.double(), True, mask, None)
    k_bad, v_bad = k.clone(), v.clone()
    (v_bad if where == "v" else k_bad)[bi, j, :, 3] = float("nan")
    dq, dk, dv = _grads(backend, q, k_bad, v_bad, mask, grad)
    first = lq // 2
    assert dq[bi, :first].isfinite().all(), "a key past the horizon reached an earlier query's dq"
    assert_close(dq[bi, :first], want[0][bi, :first], dtype=torch.float32)
    others = list(range(bi))
    for got, ref in zip((dq, dk, dv), want, strict=True):
        assert_close(got[others], ref[others], dtype=torch.float32)
    padded = mask.view(b, lk_, 1, 1).expand_as(dk)
    assert (dk[padded] == 0).all() and (dv[padded] == 0).all()


@pytest.mark.parametrize("shape", [(2, 5, 7, (4, 2)), (1, 40, 3, (2, 1))])
def test_triton_gradients_of_keys_a_nan_query_does_not_see(shape):
    """A NaN q row (query 0) never reaches the dk, dv of the keys past its horizon, nor a padded
    key's, in the Triton backward kernels (dS = 0 of such a pair times q = NaN). The reference's
    autograd through einsum does leak there (0 * NaN in dS^T q), so this checks Triton alone."""
    b, lq, extra, heads = shape
    q, k, v, mask, gen = inputs((b, lq, extra, heads), torch.float32, 99 + lq)
    lk_ = k.shape[1]
    grad = torch.randn(q.shape, generator=gen)
    want = prefusion_attention_backward(grad, q.double(), k.double(), v.double(), True, mask, None)
    q_bad = q.clone()
    q_bad[:, 0, :, 2] = float("nan")
    dq, dk, dv = _grads("triton", q_bad, k, v, mask, grad)
    unseen = slice(lk_ - lq + 1, lk_)  # keys past query 0's horizon
    assert_close(dk[:, unseen], want[1][:, unseen], dtype=torch.float32)
    assert_close(dv[:, unseen], want[2][:, unseen], dtype=torch.float32)
    assert_close(dq[:, 1:], want[0][:, 1:], dtype=torch.float32)
    padded = mask.view(b, lk_, 1, 1).expand_as(dk)
    assert (dk[padded] == 0).all() and (dv[padded] == 0).all()
