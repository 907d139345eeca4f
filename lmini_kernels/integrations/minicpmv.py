"""The fused compressor inside an instance of MiniCPM-V (the Hugging Face hub remote code).

:func:`apply_lmini_kernels_to_minicpmv` replaces ``model.resampler`` (the hub ``Resampler`` of
MiniCPM-V 2.5 / 2.6 / o2.6 / 4.0, or a vLLM-style ``Resampler2`` of MiniCPM-V 2.0) by a
:class:`lmini_kernels.FusedResampler` that *shares* its parameters (the same Parameter objects:
no memory, a state_dict with the same keys, training one trains the other). The model calls
``self.resampler(vision_embedding, tgt_sizes)`` and gets the same (B, Q, D) tensor back, so
everything around it (the vision tower ``vpm``, the ``llm``, LMDeploy's calls into that
module) is untouched. Found by structure, never by import.

vLLM: its ``MiniCPMV`` models build their own ``Resampler2_5`` (``FusedResampler.from_module``
accepts it, ``ReplicatedLinear`` kv_proj included), but no route rebinds it inside vLLM here:
vLLM is not installed in this project's environment (its CPU wheel pins another torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmini_kernels.integrations.llava_mini_official import UnsupportedModelError
from lmini_kernels.modules import FusedResampler

__all__ = ["MiniCPMVPatch", "apply_lmini_kernels_to_minicpmv", "is_minicpmv"]

#: the FusedResampler layouts that take MiniCPM-V's call ``resampler(x, tgt_sizes)``
_LAYOUTS = ("minicpmv", "resampler2")


def is_minicpmv(model: object) -> bool:
    """Whether ``model`` looks like a MiniCPM-V: an ``nn.Module`` with a ``resampler`` module
    and a vision tower ``vpm`` or a language model ``llm`` (by structure)."""
    return (
        isinstance(model, nn.Module)
        and isinstance(getattr(model, "resampler", None), nn.Module)
        and any(isinstance(getattr(model, name, None), nn.Module) for name in ("vpm", "llm"))
    )


@dataclass
class MiniCPMVPatch:
    """What :func:`apply_lmini_kernels_to_minicpmv` did: ``model.resampler`` is ``fused`` (sharing
    ``original``'s parameters) until :meth:`revert` puts ``original`` back."""

    model: nn.Module
    original: nn.Module
    fused: FusedResampler

    @property
    def active(self) -> bool:
        """Whether the model still runs the fused resampler of this patch."""
        return self.model._modules.get("resampler") is self.fused

    def revert(self) -> None:
        """Put the original resampler back. Idempotent; a resampler replaced since by someone
        else is left alone."""
        if self.active:
            self.model.resampler = self.original


def apply_lmini_kernels_to_minicpmv(model: nn.Module, *, freeze: bool = True) -> MiniCPMVPatch:
    """Run ``model.resampler`` through :func:`lmini_kernels.compress` (module docstring).

    Args:
        model: a MiniCPM-V instance (``resampler`` plus ``vpm`` or ``llm``), weights loaded.
        freeze: cache the parameter-only work (:meth:`FusedResampler.freeze`: invalidated by
            parameter updates through their version counters, bypassed while training).

    Returns:
        a :class:`MiniCPMVPatch` (``.revert()``).

    Raises:
        UnsupportedModelError (a TypeError): no ``resampler`` module, one already fused, or a
            resampler of a layout the fused module cannot reproduce (the message names the
            missing or unexpected attribute). Nothing is changed then.
    """
    if not isinstance(freeze, bool):
        raise TypeError(f"freeze: expected a bool, got {type(freeze).__name__}")
    name = type(model).__name__
    original = getattr(model, "resampler", None)
    if not isinstance(model, nn.Module) or not isinstance(original, nn.Module):
        raise UnsupportedModelError(f"{name} cannot take the MiniCPM-V patch: resampler: missing (expected a module)")
    if isinstance(original, FusedResampler):
        raise UnsupportedModelError(f"{name} cannot take the MiniCPM-V patch: resampler: already a FusedResampler")
    try:
        fused = FusedResampler.from_module(original, share=True)
    except (TypeError, ValueError) as e:
        raise UnsupportedModelError(f"{name} cannot take the MiniCPM-V patch: resampler: {e}") from e
    if fused.layout not in _LAYOUTS:
        raise UnsupportedModelError(
            f"{name} cannot take the MiniCPM-V patch: resampler: a {fused.layout!r} resampler does not take "
            f"MiniCPM-V's call (x, tgt_sizes); expected one of {_LAYOUTS}"
        )
    if freeze:
        fused.freeze()
    fused.train(original.training)
    model.resampler = fused
    return MiniCPMVPatch(model, original, fused)
