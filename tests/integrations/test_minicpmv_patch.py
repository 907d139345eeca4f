"""apply_lmini_kernels_to_minicpmv on a tiny MiniCPM-V stand-in (a vision stand-in ``vpm``,
the hub ``resampler``, an ``llm`` stub): the patched model's image embeddings equal the
original's, parameters stay shared, revert restores the module, refusals name the piece."""

from __future__ import annotations

import pytest
import torch
from resampler_standins import HubMiniCPMVResampler, perturb_
from torch import nn
from utils import rel_error

import lmini_kernels as lk
from lmini_kernels.integrations import (
    UnsupportedModelError,
    apply_lmini_kernels,
    apply_lmini_kernels_to_minicpmv,
    is_minicpmv,
)


class TinyMiniCPMV(nn.Module):
    """The attribute layout of MiniCPM-V's remote code: vpm (vision), resampler, llm."""

    def __init__(self) -> None:
        super().__init__()
        self.vpm = nn.Linear(12, 40)  # patch features -> the tower's width (a stand-in)
        self.resampler = perturb_(HubMiniCPMVResampler(96, 64, 4, kv_dim=40))
        self.llm = nn.Linear(64, 64)

    def get_vision_embedding(self, patches: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        return self.llm(self.resampler(self.vpm(patches), tgt_sizes))


def _batch():
    sizes = torch.tensor([[3, 5], [4, 2], [1, 1]])
    n = int((sizes[:, 0] * sizes[:, 1]).max())
    patches = torch.randn(3, n, 12)
    return patches, sizes


def test_patch_matches_and_reverts():
    model = TinyMiniCPMV().eval()
    patches, sizes = _batch()
    with torch.no_grad():
        ref = model.get_vision_embedding(patches, sizes)
    original = model.resampler
    assert is_minicpmv(model)
    patch = apply_lmini_kernels_to_minicpmv(model)
    assert isinstance(model.resampler, lk.FusedResampler) and model.resampler.frozen
    assert model.resampler.query is original.query  # shared, not copied
    with torch.no_grad():
        out = model.get_vision_embedding(patches, sizes)
        out2 = model.get_vision_embedding(patches, sizes)  # cached fold
    for b in range(3):
        assert rel_error(out[b], ref[b]) <= 1e-5
    assert torch.equal(out, out2)
    with torch.no_grad():  # an in-place update of a shared weight reaches the fused module
        original.query.mul_(1.5)
        ref2 = torch.stack([original(model.vpm(patches), sizes)])[0]
        out3 = model.resampler(model.vpm(patches), sizes)
    assert rel_error(out3, ref2) <= 1e-5
    patch.revert()
    assert model.resampler is original
    patch.revert()  # idempotent
    assert model.resampler is original


def test_auto_entry_point_detects_minicpmv():
    model = TinyMiniCPMV().eval()
    report = apply_lmini_kernels(model)
    assert report.kind == "MiniCPM-V" and any("resampler" in p for p in report.patched), str(report)
    assert isinstance(model.resampler, lk.FusedResampler)
    report.revert()
    assert isinstance(model.resampler, HubMiniCPMVResampler)


def test_refusals_name_the_piece():
    model = TinyMiniCPMV()
    apply_lmini_kernels_to_minicpmv(model)
    with pytest.raises(UnsupportedModelError, match="already a FusedResampler"):
        apply_lmini_kernels_to_minicpmv(model)
    with pytest.raises(UnsupportedModelError, match="resampler"):
        apply_lmini_kernels_to_minicpmv(nn.Linear(2, 2))
    odd = TinyMiniCPMV()
    odd.resampler = nn.Linear(3, 3)  # not a resampler
    with pytest.raises(UnsupportedModelError, match=r"resampler.*pos_embed"):
        apply_lmini_kernels_to_minicpmv(odd)
    assert isinstance(odd.resampler, nn.Linear)  # nothing changed
