"""The fused compressor inside a MiniCPM-V instance (HF hub remote code, 2.0 to 4.0).

:func:`apply_lmini_kernels_to_minicpmv` replaces ``model.resampler`` (MiniCPM-V's query
resampler: hub ``resampler.py``; LMDeploy calls the same module) with a
:class:`lmini_kernels.FusedResampler` built by ``from_module(..., share=True)``: the same
Parameter objects (same state_dict keys, no copy), the same call (``x, tgt_sizes``) and return
layout. Found by structure (a ``resampler`` next to ``vpm`` or ``llm``), never by import. vLLM's
``Resampler2_5`` is accepted by ``FusedResampler.from_module`` too (its ``ReplicatedLinear``
kv_proj included), but there is no vLLM route here: vLLM's CPU build pins another torch, so a
plugin that rebinds vLLM's class could not be tested in this project's environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmini_kernels.integrations.llava_mini_official import UnsupportedModelError
from lmini_kernels.modules import FusedResampler


def is_minicpmv(model: object) -> bool:
    """A MiniCPM-V-like model: an ``nn.Module`` ``resampler`` beside a ``vpm`` or an ``llm``."""
    return isinstance(getattr(model, "resampler", None), nn.Module) and (hasattr(model, "vpm") or hasattr(model, "llm"))


@dataclass
class MiniCPMVPatch:
    """What :func:`apply_lmini_kernels_to_minicpmv` changed; :meth:`revert` puts it back."""

    model: nn.Module
    original: nn.Module
    resampler: FusedResampler

    def revert(self) -> None:
        """The original resampler back (idempotent)."""
        if self.model.resampler is self.resampler:
            self.model.resampler = self.original

    def refresh(self) -> None:
        """Drop the fused resampler's cache (after a write through ``.data``)."""
        self.resampler.refresh()


def apply_lmini_kernels_to_minicpmv(model: nn.Module, *, freeze: bool = True) -> MiniCPMVPatch:
    """Put a :class:`~lmini_kernels.FusedResampler` that shares ``model.resampler``'s parameters
    in its place (frozen for inference unless ``freeze=False``; training recomputes the fold
    anyway). Returns a :class:`MiniCPMVPatch`.

    Raises :class:`~lmini_kernels.integrations.UnsupportedModelError` naming the class and the
    missing piece: no ``resampler`` next to ``vpm``/``llm``, one already fused, or one whose
    layout ``FusedResampler.from_module`` does not know."""
    if not is_minicpmv(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot take the MiniCPM-V patch: resampler: expected an nn.Module attribute "
            "'resampler' beside 'vpm' or 'llm'"
        )
    original = model.resampler
    if isinstance(original, FusedResampler):
        raise UnsupportedModelError(f"{type(model).__name__}.resampler: already a FusedResampler")
    try:
        fused = FusedResampler.from_module(original, share=True)
    except (TypeError, ValueError) as e:
        raise UnsupportedModelError(f"{type(model).__name__}.resampler: {e}") from e
    fused.train(original.training)
    if freeze:
        fused.freeze()
    model.resampler = fused
    return MiniCPMVPatch(model, original, fused)
