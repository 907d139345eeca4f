"""FusedResampler: official state dicts, from_module, caching, training, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from utils import assert_close, randn

import lmini_kernels as lk
from lmini_tools.baselines import OfficialResampler


def _official(grid=2, dim=72, heads=8, kv_dim=None) -> OfficialResampler:
    m = OfficialResampler(grid, dim, heads, kv_dim)
    with torch.no_grad():  # away from the identity-ish init so every parameter matters
        for name, prm in m.named_parameters():
            if name != "pos_embed":
                prm.add_(torch.randn_like(prm) * (0.3 if prm.dim() == 1 else prm.shape[-1] ** -0.5))
    return m


@pytest.mark.parametrize(("grid", "kv_dim", "tokens_side"), [(1, None, 5), (2, 40, 5), (3, None, 13)])
def test_state_dict_of_official_module_loads_strictly_and_matches(grid, kv_dim, tokens_side):
    off = _official(grid, 72, 8, kv_dim)
    fused = lk.FusedResampler(grid, 72, 8, kv_dim)
    fused.load_state_dict(off.state_dict(), strict=True)
    assert set(fused.state_dict()) == set(off.state_dict())
    x = randn(3, tokens_side**2, kv_dim or 72)
    with torch.no_grad():
        ref, ref_w = copy.deepcopy(off).double()(x.double())
        for backend in ("reference", "cpu"):
            out, w = fused(x, need_weights=True, backend=backend)
            assert_close(out, ref, dtype=torch.float32)
            assert_close(w, ref_w, dtype=torch.float32)
            torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_from_module_copies_parameters_and_eps():
    off = _official(2, 16, 2)
    off.ln_kv.eps = off.ln_q.eps = 1e-6
    fused = lk.FusedResampler.from_module(off)
    assert fused.ln_kv.eps == 1e-6
    for (n1, p1), (n2, p2) in zip(off.state_dict().items(), fused.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
    x = randn(2, 9, 16)
    with torch.no_grad():
        assert_close(fused(x, backend="cpu")[0], copy.deepcopy(off).double()(x.double())[0], dtype=torch.float32)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_each_layernorm_keeps_its_own_eps(backend):
    """ln_q and ln_kv with different epsilons, on inputs where eps moves the output (queries and
    features of variance ~1e-3): the fused module matches the official one, and swapping the two
    epsilons gives a clearly different answer (so a shared eps cannot pass)."""
    off = _official(2, 16, 2)
    off.ln_q.eps, off.ln_kv.eps = 1e-2, 1e-6
    with torch.no_grad():
        off.query.mul_(0.03)
    x = randn(2, 9, 16) * 0.03
    with torch.no_grad():
        ref = copy.deepcopy(off).double()(x.double())[0]
        out = lk.FusedResampler.from_module(off)(x, backend=backend)[0]
        assert_close(out, ref, dtype=torch.float32)
        swapped = copy.deepcopy(off)
        swapped.ln_q.eps, swapped.ln_kv.eps = 1e-6, 1e-2
        wrong = lk.FusedResampler.from_module(swapped)(x, backend=backend)[0]
        assert (wrong - ref.float()).norm() > 0.05 * ref.norm()


def test_frozen_cache_follows_parameter_updates_and_n():
    fused = lk.FusedResampler.from_module(_official(2, 16, 2)).freeze()
    x5, x3 = randn(2, 25, 16), randn(2, 9, 16)
    with torch.no_grad():
        a = fused(x5, backend="cpu", algorithm="folded")[0]
        assert len(fused._cache) == 1
        fused(x3, backend="cpu", algorithm="folded")
        assert len(fused._cache) == 2  # one entry per N
        assert torch.equal(fused(x5, backend="cpu", algorithm="folded")[0], a)  # served from the cache
        fused.attn.in_proj_weight.mul_(1.5)  # an in-place update bumps the version counter
        b = fused(x5, backend="cpu", algorithm="folded")[0]
        ref = fused(x5, backend="reference")[0]
    assert not torch.equal(a, b)
    assert_close(b, ref, factor=3.0)
    assert len(fused._cache) == 1  # the stale entries are gone


@pytest.mark.parametrize(
    "write",
    [
        lambda m: m.attn.in_proj_weight.data.mul_(1.5),
        lambda m: m.query.data.copy_(torch.randn_like(m.query)),
        lambda m: m.ln_kv.weight.data.mul_(-1),
        lambda m: m.pos_embed.data.mul_(3),
    ],
)
def test_writes_through_data_are_never_served_stale(write):
    """``p.data`` writes do not bump the version counter: unfrozen (the default), the module
    recomputes the fold each call and follows them; frozen, ``refresh()`` does."""
    x = randn(2, 25, 16)
    fused = lk.FusedResampler.from_module(_official(2, 16, 2))
    with torch.no_grad():
        before = fused(x, backend="cpu")[0]
        write(fused)
        after = fused(x, backend="cpu")[0]
        assert not torch.equal(before, after)
        assert_close(after, fused(x, backend="reference")[0], factor=3.0)
        assert not fused._cache
        fused.freeze()
        fused(x, backend="cpu")
        write(fused)
        fused.refresh()
        assert_close(fused(x, backend="cpu")[0], fused(x, backend="reference")[0], factor=3.0)
        fused.unfreeze()
        assert not fused.frozen and not fused._cache


@pytest.mark.parametrize(
    ("args", "word"),
    [((1, 16, 0), "num_heads"), ((0, 16, 2), "grid_size"), ((1, 0, 2), "embed_dim"), ((1, 16, 2, 0), "kv_dim"),
     ((1, 16, 3), "num_heads"), ((1, 16, 2.0), "num_heads"), ((1, 16, True), "num_heads")],
)  # fmt: skip
def test_constructor_rejects_bad_sizes(args, word):
    with pytest.raises(ValueError, match=word):
        lk.FusedResampler(*args)


def test_training_reaches_every_parameter():
    fused = lk.FusedResampler.from_module(_official(2, 24, 3, kv_dim=20))
    x = randn(2, 25, 20, scale=2.0).requires_grad_()
    out, _ = fused(x, backend="cpu")
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, prm in fused.named_parameters():
        if prm.requires_grad:
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name
    assert not fused._cache  # nothing cached while a graph is recorded
    # one SGD step changes the output (the fold is recomputed, not stale)
    with torch.no_grad():
        before = fused(x, backend="cpu")[0]
        for prm in fused.parameters():
            if prm.grad is not None:
                prm -= 0.1 * prm.grad
        after = fused(x, backend="cpu")[0]
        assert_close(after, fused(x, backend="reference")[0], factor=3.0)
    assert not torch.equal(before, after)


def test_attn_mask_refused_and_bad_x_named():
    fused = lk.FusedResampler(1, 16, 2)
    with pytest.raises(ValueError, match="attn_mask"):
        fused(randn(1, 9, 16), attn_mask=torch.zeros(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="x: expected a"):
        fused(randn(9, 16))
    with pytest.raises(ValueError, match=r"x.shape\[1\]"):
        fused(randn(1, 8, 16))
    with pytest.raises(ValueError, match="embed_dim"):
        lk.FusedResampler(1, 18, 4)


def test_module_half_precision_cpu():
    fused = lk.FusedResampler.from_module(_official(2, 72, 8)).half()
    x = randn(3, 25, 72, dtype=torch.float16)
    with torch.no_grad():
        out, _ = fused(x, backend="cpu")
        ref, _ = copy.deepcopy(fused).double()(x.double(), backend="reference")
    assert out.dtype == torch.float16
    assert_close(out, ref)


def test_torch_compile_fullgraph():
    fused = lk.FusedResampler.from_module(_official(2, 16, 2))
    x = randn(2, 25, 16)
    compiled = torch.compile(fused, fullgraph=True, backend="inductor")
    with torch.no_grad():
        out, w = compiled(x, need_weights=True, backend="cpu")
        ref, ref_w = fused(x, need_weights=True, backend="reference")
    assert_close(out, ref, factor=3.0)
    assert_close(w, ref_w, factor=3.0)


def test_official_module_is_nn_multihead_attention_layout():
    off = OfficialResampler(1, 16, 2)
    assert isinstance(off.attn, nn.MultiheadAttention) and isinstance(off.ln_q, nn.LayerNorm)
    keys = set(off.state_dict())
    want = {"query", "pos_embed", "ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias",
            "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias"}  # fmt: skip
    assert keys == want
