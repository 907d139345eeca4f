"""FusedResampler.from_module on stand-ins of each member of the query-resampler family
(resampler_standins.py: MiniCPM-V's hub Resampler, vLLM's Resampler2_5 and Resampler2, Qwen-VL's
Resampler), against the source module itself run in float64 on the same weights.

Random rectangular and ragged ``tgt_sizes`` (one image of a single token in every ragged
batch), Q = 96 for MiniCPM-V, every backend (triton and cuda through the interpreter and the
host SIMT layer, tests/conftest.py), every algorithm, shared and copied weights, bf16, NaN in
padded rows, and the errors on bad input.
"""

from __future__ import annotations

import copy

import pytest
import torch
from resampler_standins import (
    HubMiniCPMVResampler,
    QwenVLResampler,
    VllmResampler2,
    VllmResampler2_5,
    perturb_,
)
from torch import nn
from utils import TOLERANCE, rel_error

import lmini_kernels as lk

BACKENDS = ("reference", "cpu", "triton", "cuda")
ALGORITHMS = ("auto", "folded", "folded_kv", "projected")

#: name -> (factory, kv_dim of the features)
MEMBERS = {
    "hub_minicpmv": (lambda: HubMiniCPMVResampler(96, 64, 4, kv_dim=40), 40),
    "hub_minicpmv_identity": (lambda: HubMiniCPMVResampler(12, 32, 2), 32),
    "vllm_resampler2_5": (lambda: VllmResampler2_5(96, 64, 4, kv_dim=40), 40),
    "vllm_resampler2_5_fn_kv": (lambda: VllmResampler2_5(10, 32, 4), 32),
    "vllm_resampler2": (lambda: VllmResampler2(3, 64, 4, kv_dim=40), 40),
    "vllm_resampler2_adaptive": (lambda: VllmResampler2(3, 64, 4, kv_dim=40, adaptive=True), 40),
    "vllm_resampler2_qwen": (lambda: VllmResampler2(4, 32, 2, do_post_projection=False), 32),
    "vllm_resampler2_adaptive_nopost": (
        lambda: VllmResampler2(2, 32, 4, kv_dim=24, adaptive=True, do_post_projection=False),
        24,
    ),
    "qwen_vl": (lambda: QwenVLResampler(3, 64, 4, kv_dim=40), 40),
}
MINICPMV = [k for k in MEMBERS if "minicpmv" in k or "2_5" in k]
WITH_KV = [k for k, (make, _) in MEMBERS.items() if isinstance(getattr(make().kv_proj, "weight", None), torch.Tensor)]


def member(name: str) -> nn.Module:
    return perturb_(MEMBERS[name][0]())


def ragged_sizes(batch: int) -> torch.Tensor:
    """(batch, 2) random rectangular (H, W), image 0 a single token."""
    sizes = torch.randint(1, 7, (batch, 2))
    sizes[0] = 1
    return sizes[torch.randperm(batch)]


def inputs(name: str, m: nn.Module, batch: int = 4, pad: float = 0.0, extra: int = 0):
    """(x, args) for the source's call: MiniCPM-V x (B, max H*W, kv) padded with ``pad``;
    Resampler2 a random (H, W) grid (or, half the time, None: a square one); Qwen-VL a square
    grid of random side."""
    kv = MEMBERS[name][1]
    if name in MINICPMV:
        sizes = ragged_sizes(batch)
        lens = sizes[:, 0] * sizes[:, 1]
        x = torch.randn(batch, int(lens.max()) + extra, kv)
        seen = torch.arange(x.shape[1]) < lens.view(-1, 1)
        x[~seen] = pad
        return x, (sizes,)
    if isinstance(m, VllmResampler2) and bool(torch.randint(0, 2, ()).item()):
        h, w = (int(v) for v in torch.randint(1, 7, (2,)))
        return torch.randn(batch, h * w, kv), ((h, w),)
    side = int(torch.randint(1, 7, ()).item())
    return torch.randn(batch, side * side, kv), ()


def source(m: nn.Module, x: torch.Tensor, args, dtype=torch.float64) -> torch.Tensor:
    """The source module's own output, on a copy in ``dtype``."""
    with torch.no_grad():
        return copy.deepcopy(m).to(dtype)(x.to(dtype), *args)


def assert_per_image(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != source's {tuple(ref.shape)}"
    errs = [rel_error(out[b], ref[b]) for b in range(out.shape[0])]
    assert max(errs) <= tol, f"relative error per image {[f'{e:.1e}' for e in errs]} > {tol:.0e}"


# ---------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MEMBERS))
def test_matches_source_every_backend_and_algorithm(name, backend, algorithm):
    m = member(name)
    fused = lk.FusedResampler.from_module(m)
    for _ in range(2):  # two random grids / batches per case
        x, args = inputs(name, m)
        if algorithm == "folded_kv" and name not in WITH_KV:
            with pytest.raises(ValueError, match="algorithm"):
                fused(x, *args, backend=backend, algorithm=algorithm)
            return
        with torch.no_grad():
            out = fused(x, *args, backend=backend, algorithm=algorithm)
        assert_per_image(out, source(m, x, args), TOLERANCE[torch.float32])


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("name", list(MEMBERS))
def test_from_module_same_call_dtype_and_layout(name, share):
    m = member(name)
    fused = lk.FusedResampler.from_module(m, share=share)
    x, args = inputs(name, m, batch=5)
    with torch.no_grad():
        ref32 = m(x, *args)
        out = fused(x, *args)
    assert isinstance(out, torch.Tensor) and out.dtype == ref32.dtype and out.shape == ref32.shape
    assert out.is_contiguous()
    assert_per_image(out, source(m, x, args), TOLERANCE[torch.float32])
    assert_per_image(ref32, source(m, x, args), TOLERANCE[torch.float32])  # the stand-in itself
    assert set(fused.state_dict()) >= {k for k in m.state_dict()}


# The adaptive tables: the source builds them in float32 NumPy, the fused module in float64
# (8.8e-8 apart): float64 equality at 1e-12 cannot hold there, nor where the source resizes
# its table (F.interpolate vs the separable matmul, 4e-7 apart). Everywhere else it does.
FP64 = ["hub_minicpmv", "hub_minicpmv_identity", "vllm_resampler2_5", "vllm_resampler2_5_fn_kv",
        "vllm_resampler2", "vllm_resampler2_qwen", "qwen_vl"]  # fmt: skip


@pytest.mark.parametrize("name", FP64)
def test_float64_equal_to_source(name):
    m = member(name).double()
    fused = lk.FusedResampler.from_module(m)
    q = m.query.shape[0]
    side = int(round(q**0.5))
    for _ in range(2):
        if name in MINICPMV:
            x, args = inputs(name, m)
        else:  # the queries' own grid: no resize
            x, args = torch.randn(3, side * side, MEMBERS[name][1]), ()
        x = x.double()
        with torch.no_grad():
            out = fused(x, *args, backend="reference")
        assert out.dtype == torch.float64
        assert_per_image(out, source(m, x, args), TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name", ["hub_minicpmv", "vllm_resampler2_5_fn_kv", "vllm_resampler2", "qwen_vl"])
def test_bf16_parameters(name, backend):
    """A bf16 source and bf16 features: the fused module returns bf16, as close to the float64
    run of the same bf16 weights as the bf16 source itself is (bf16 tolerance)."""
    m = member(name).to(torch.bfloat16)
    fused = lk.FusedResampler.from_module(m)
    x, args = inputs(name, m)
    x = x.to(torch.bfloat16)
    with torch.no_grad():
        out = fused(x, *args, backend=backend)
        own = m(x, *args)
    ref = source(m, x, args)
    assert out.dtype == own.dtype == torch.bfloat16
    # bf16 rounding of the source's own intermediates reaches 1e-2 at these sizes: 2x the
    # bf16 tolerance for both (the float32 and float64 twins above bound the math tightly)
    assert_per_image(out, ref, 2 * TOLERANCE[torch.bfloat16])
    assert_per_image(own, ref, 2 * TOLERANCE[torch.bfloat16])


# ---------------------------------------------------------------------------------- ragged data
@pytest.mark.parametrize("algorithm", ["auto", "folded", "folded_kv", "projected"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["hub_minicpmv", "vllm_resampler2_5"])
def test_nan_in_padded_rows(name, backend, algorithm):
    """Padded rows full of NaN: the fused module's output stays finite and equal to the source's
    on zero padding. (The source is not NaN-safe: nn.MultiheadAttention adds the -inf mask to
    NaN scores and multiplies NaN values by zero weights, so its images with padding go NaN.)"""
    m = member(name)
    fused = lk.FusedResampler.from_module(m)
    x, args = inputs(name, m, batch=5, pad=float("nan"))
    with torch.no_grad():
        out = fused(x, *args, backend=backend, algorithm=algorithm)
        own = m(x, *args)
    assert torch.isfinite(out).all()
    assert_per_image(out, source(m, torch.nan_to_num(x, nan=0.0), args), TOLERANCE[torch.float32])
    padded = (args[0][:, 0] * args[0][:, 1]) < x.shape[1]
    assert torch.isnan(own[padded]).all() and torch.isfinite(own[~padded]).all()


@pytest.mark.parametrize("name", MINICPMV)
def test_minicpmv_longer_padding_and_grown_table(name):
    """x longer than the longest image (its tail is padding, as the hub code's later versions
    re-pad it), and a grid larger than the (H, W) table: both modules grow theirs."""
    m = member(name)
    fused = lk.FusedResampler.from_module(m)
    x, (sizes,) = inputs(name, m, extra=3)
    n = int((sizes[:, 0] * sizes[:, 1]).max())
    with torch.no_grad():
        assert_per_image(fused(x, sizes), source(m, x[:, :n], (sizes,)), TOLERANCE[torch.float32])
    small = MEMBERS[name][0]()
    small._set_2d_pos_cache((2, 3))
    small.max_size = (2, 3)
    perturb_(small)
    fused = lk.FusedResampler.from_module(small)
    assert fused.max_size == (2, 3)
    sizes = torch.tensor([[4, 2], [1, 7], [3, 3]])
    x = torch.randn(3, 9, MEMBERS[name][1])
    x[0, 8:], x[1, 7:] = 0, 0
    with torch.no_grad():
        out = fused(x, sizes)
    assert fused.max_size == (4, 7)
    assert_per_image(out, source(small, x, (sizes,)), TOLERANCE[torch.float32])


# ---------------------------------------------------------------------------------- sharing
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", ["hub_minicpmv", "vllm_resampler2_5_fn_kv", "vllm_resampler2", "qwen_vl"])
def test_share_true_follows_an_optimizer_step_on_the_source(name, frozen):
    m = member(name)
    fused = lk.FusedResampler.from_module(m, share=True)
    if frozen:
        fused.freeze()
    params = {id(p) for p in m.parameters()}
    assert all(id(p) in params for p in fused.parameters())
    x, args = inputs(name, m)
    with torch.no_grad():
        before = fused(x, *args)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m(x, *args).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = fused(x, *args)
    assert rel_error(after, before) > 1e-3
    assert_per_image(after, source(m, x, args), TOLERANCE[torch.float32])


@pytest.mark.parametrize("name", ["hub_minicpmv", "vllm_resampler2_5_fn_kv", "vllm_resampler2", "qwen_vl"])
def test_share_false_is_an_independent_copy(name):
    m = member(name)
    fused = lk.FusedResampler.from_module(m, share=False)
    ptrs = {p.data_ptr() for p in m.parameters()}
    assert not any(p.data_ptr() in ptrs for p in fused.parameters())
    x, args = inputs(name, m)
    with torch.no_grad():
        before = fused(x, *args)
        ref = source(m, x, args)
        for p in m.parameters():
            p.mul_(1.5)
        assert torch.equal(fused(x, *args), before)
    assert_per_image(before, ref, TOLERANCE[torch.float32])


def test_training_through_the_fused_module_reaches_the_source():
    """share=True the other way round: a step taken through the fused module moves the
    source's parameters (the same objects), and both then agree."""
    m = member("hub_minicpmv")
    fused = lk.FusedResampler.from_module(m, share=True)
    x, args = inputs("hub_minicpmv", m)
    q0 = m.query.detach().clone()
    opt = torch.optim.SGD([p for p in fused.parameters() if p.requires_grad], lr=0.5)
    fused(x, *args).square().mean().backward()
    opt.step()
    assert not torch.equal(m.query, q0)
    with torch.no_grad():
        assert_per_image(fused(x, *args), source(m, x, args), TOLERANCE[torch.float32])


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", MINICPMV)
def test_bad_tgt_sizes(name):
    m = member(name)
    fused = lk.FusedResampler.from_module(m)
    kv = MEMBERS[name][1]
    x = torch.randn(3, 12, kv)
    bad = {
        "an image longer than x": torch.tensor([[3, 4], [4, 4], [1, 1]]),
        "a row of 0": torch.tensor([[3, 4], [0, 4], [1, 1]]),
        "rows != batch": torch.tensor([[3, 4], [2, 2]]),
        "floats": torch.tensor([[3.0, 4.0], [2.0, 2.0], [1.0, 1.0]]),
    }
    for why, sizes in bad.items():
        with pytest.raises(ValueError, match="tgt_sizes"):
            fused(x, sizes)
        assert why
    with pytest.raises(ValueError, match="tgt_sizes"):
        fused(torch.randn(3, 10, kv))  # no tgt_sizes and not a square grid


@pytest.mark.parametrize("name", ["vllm_resampler2", "vllm_resampler2_qwen", "qwen_vl"])
def test_bad_grid_and_attn_mask(name):
    m = member(name)
    fused = lk.FusedResampler.from_module(m)
    kv = MEMBERS[name][1]
    with pytest.raises(ValueError, match=r"x\.shape\[1\]"):
        fused(torch.randn(2, 10, kv))
    mask = torch.zeros(m.query.shape[0], 9, dtype=torch.bool)
    if isinstance(m, VllmResampler2):
        with pytest.raises(ValueError, match="tgt_sizes"):
            fused(torch.randn(2, 12, kv), (3, 5))
        with pytest.raises(ValueError, match="attn_mask"):
            fused(torch.randn(2, 9, kv), None, mask)
    with pytest.raises(ValueError, match="attn_mask"):
        fused(torch.randn(2, 9, kv), attn_mask=mask)


def test_unknown_layouts_name_the_attribute():
    with pytest.raises(TypeError, match=r"Linear\.pos_embed"):
        lk.FusedResampler.from_module(nn.Linear(4, 4))
    m = member("qwen_vl")
    del m.attn
    with pytest.raises(TypeError, match=r"\.attn"):
        lk.FusedResampler.from_module(m)
    m = member("vllm_resampler2")
    m.kv_proj.bias = nn.Parameter(torch.zeros(64))
    with pytest.raises(TypeError, match=r"\.kv_proj"):
        lk.FusedResampler.from_module(m)
    m = member("hub_minicpmv")
    m.proj = None
    with pytest.raises(TypeError, match="ln_post/proj"):
        lk.FusedResampler.from_module(m)
