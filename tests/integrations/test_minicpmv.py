"""apply_lmini_kernels_to_minicpmv on a tiny stand-in MiniCPM-V (a ``vpm``, the hub
``resampler`` of resampler_standins.py, a minimal ``llm``): the patched instance against the
same instance unpatched, revert, refusals (nothing changed), and the one entry point."""

from __future__ import annotations

import pytest
import torch
from resampler_standins import HubMiniCPMVResampler, QwenVLResampler, VllmResampler2, perturb_
from torch import nn
from utils import TOLERANCE, rel_error

import lmini_kernels as lk
from lmini_kernels.integrations import (
    MiniCPMVPatch,
    UnsupportedModelError,
    apply_lmini_kernels,
    apply_lmini_kernels_to_minicpmv,
    is_minicpmv,
)

PATCH, KV, D, VOCAB = 12, 40, 64, 17


class TinyMiniCPMV(nn.Module):
    """The attribute structure of the hub ``MiniCPMV``: ``vpm`` (here a linear patch embedding
    to kv_dim), ``resampler`` called as ``resampler(vision_embedding, tgt_sizes)``, ``llm``."""

    def __init__(self, resampler: nn.Module):
        super().__init__()
        self.vpm = nn.Linear(PATCH, KV)
        self.resampler = resampler
        self.llm = nn.Embedding(VOCAB, D)

    def get_vision_embedding(self, patches, tgt_sizes):
        return self.resampler(self.vpm(patches), tgt_sizes)

    def forward(self, patches, tgt_sizes, input_ids):
        return torch.cat([self.get_vision_embedding(patches, tgt_sizes), self.llm(input_ids)], dim=1)


def hub_model(num_queries=96) -> TinyMiniCPMV:
    return perturb_(TinyMiniCPMV(HubMiniCPMVResampler(num_queries, D, 4, kv_dim=KV)))


def ragged_inputs(batch=4):
    sizes = torch.randint(1, 6, (batch, 2))
    sizes[1] = 1
    lens = sizes[:, 0] * sizes[:, 1]
    patches = torch.randn(batch, int(lens.max()), PATCH)
    patches[torch.arange(patches.shape[1]) >= lens.view(-1, 1)] = 0
    return patches, sizes, torch.randint(0, VOCAB, (batch, 5))


def run(model, *inputs):
    with torch.no_grad():
        return model(*inputs)


def assert_close_per_row(out, ref):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    errs = [rel_error(out[b], ref[b]) for b in range(out.shape[0])]
    assert max(errs) <= TOLERANCE[torch.float32], f"relative errors {errs}"


def test_patch_matches_and_revert_restores():
    model = hub_model()
    original = model.resampler
    inputs = ragged_inputs()
    ref = run(model, *inputs)
    ref64 = run(model.double(), *(t.double() if t.is_floating_point() else t for t in inputs)).float()
    model.float()
    patch = apply_lmini_kernels_to_minicpmv(model)
    assert isinstance(patch, MiniCPMVPatch) and patch.active
    assert isinstance(model.resampler, lk.FusedResampler) and model.resampler.frozen
    assert model.resampler.layout == "minicpmv" and model.resampler.query is original.query  # shared
    out = run(model, *inputs)
    assert_close_per_row(out, ref64)
    assert_close_per_row(run(model, *inputs), out)  # the frozen fold served from the cache
    assert set(model.state_dict()) == set(TinyMiniCPMV(HubMiniCPMVResampler(96, D, 4, kv_dim=KV)).state_dict())
    patch.revert()
    assert model.resampler is original and not patch.active
    assert torch.equal(run(model, *inputs), ref)
    patch.revert()  # idempotent
    assert model.resampler is original


def test_minicpmv2_resampler2_and_unfrozen():
    """MiniCPM-V 2.0's Resampler2 (post projection, one (H, W) grid per call), freeze=False."""
    model = perturb_(TinyMiniCPMV(VllmResampler2(3, D, 4, kv_dim=KV)))
    patches, ids = torch.randn(2, 20, PATCH), torch.randint(0, VOCAB, (2, 3))
    ref = run(model, patches, (4, 5), ids)
    patch = apply_lmini_kernels_to_minicpmv(model, freeze=False)
    assert model.resampler.layout == "resampler2" and not model.resampler.frozen
    assert_close_per_row(run(model, patches, (4, 5), ids), ref)
    patch.revert()


def test_training_after_the_patch_trains_the_original():
    model = hub_model(10)
    original = model.resampler
    inputs = ragged_inputs()
    patch = apply_lmini_kernels_to_minicpmv(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    q0 = original.query.detach().clone()
    model.train()
    model(*inputs).square().mean().backward()
    opt.step()
    assert not torch.equal(original.query, q0)
    patched = run(model, *inputs)
    patch.revert()
    assert_close_per_row(patched, run(model, *inputs))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Module(), "resampler: missing"),
        (lambda: TinyMiniCPMV(nn.Linear(KV, D)), r"resampler: Linear\.pos_embed"),
        (lambda: TinyMiniCPMV(QwenVLResampler(3, D, 4, kv_dim=KV)), "'qwen_vl' resampler"),
    ],
)
def test_refusals_leave_the_model_unchanged(make, match):
    model = make()
    before = getattr(model, "resampler", None)
    with pytest.raises(UnsupportedModelError, match=match):
        apply_lmini_kernels_to_minicpmv(model)
    assert getattr(model, "resampler", None) is before


def test_already_fused_and_bad_option():
    model = hub_model(10)
    apply_lmini_kernels_to_minicpmv(model)
    with pytest.raises(UnsupportedModelError, match="already a FusedResampler"):
        apply_lmini_kernels_to_minicpmv(model)
    with pytest.raises(TypeError, match="freeze"):
        apply_lmini_kernels_to_minicpmv(hub_model(10), freeze="yes")


def test_one_entry_point():
    model = hub_model()
    original = model.resampler
    inputs = ragged_inputs()
    ref = run(model, *inputs)
    assert is_minicpmv(model) and not is_minicpmv(original)
    report = apply_lmini_kernels(model)
    assert report.kind == "MiniCPM-V" and report.patched and "FusedResampler" in report.patched[0]
    assert isinstance(model.resampler, lk.FusedResampler)
    assert_close_per_row(run(model, *inputs), ref)
    report.revert()
    assert model.resampler is original
    refused = TinyMiniCPMV(QwenVLResampler(3, D, 4, kv_dim=KV))
    report = apply_lmini_kernels(refused)
    assert report.kind == "MiniCPM-V" and not report.patched
    assert report.not_patched[0][0] == "resampler" and "qwen_vl" in report.not_patched[0][1]
