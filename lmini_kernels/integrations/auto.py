"""One entry point: :func:`apply_lmini_kernels` finds what a model is and applies what fits.

Detectors run in order (the first that matches decides, as a model-type -> apply map):

1. the reference model of this project (``llava_mini.LlavaMini``, recognised by class name and
   attributes, never imported): nothing to patch, it already calls the library's ops;
2. the official LLaVA-Mini (``LlavaMiniLlamaForCausalLM``, by structure):
   :func:`~lmini_kernels.integrations.apply_lmini_kernels_to_llava_mini`;
3. MiniCPM-V (a ``resampler`` module beside ``vpm`` or ``llm``, by structure):
   :func:`~lmini_kernels.integrations.apply_lmini_kernels_to_minicpmv`;
4. any other Hugging Face ``PreTrainedModel``: its attention through
   :func:`~lmini_kernels.integrations.register_hf_attention` and
   ``set_attn_implementation("lmini")``, when the model supports a settable attention.

Anything else is reported as not patched, with the reason; nothing raises for an unknown model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lmini_kernels.integrations.llava_mini_official import (
    UnsupportedModelError,
    apply_lmini_kernels_to_llava_mini,
    is_official_llava_mini,
)
from lmini_kernels.integrations.minicpmv import apply_lmini_kernels_to_minicpmv, is_minicpmv

__all__ = ["PatchReport", "apply_lmini_kernels"]


@dataclass
class PatchReport:
    """What :func:`apply_lmini_kernels` did: ``kind`` (the detected model kind), ``patched``
    (one line per change), ``not_patched`` ((what, why) pairs) and :meth:`revert`."""

    model: str
    kind: str
    patched: list[str] = field(default_factory=list)
    not_patched: list[tuple[str, str]] = field(default_factory=list)
    _revert: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def revert(self) -> None:
        """Undo every change, last first. Idempotent."""
        while self._revert:
            self._revert.pop()()

    def __str__(self) -> str:
        lines = [f"{self.model} ({self.kind})"]
        lines += [f"  patched: {p}" for p in self.patched]
        lines += [f"  not patched: {what}: {why}" for what, why in self.not_patched]
        return "\n".join(lines)


def _is_reference_llava_mini(model: object) -> bool:
    # duck-typed: the library never imports llava_mini
    return (
        type(model).__name__ == "LlavaMini"
        and callable(getattr(model, "fused_prefusion", None))
        and isinstance(getattr(model, "STAGES", None), dict)
    )


def _reference(model: nn.Module, report: PatchReport, **_: Any) -> None:
    backend = getattr(model, "backend", "auto")
    report.not_patched.append(
        ("everything", f"the reference model already runs lmini_kernels.compress, prefusion_attention and "
                       f"FusedPreFusion through its own backend ({backend!r}); nothing to patch")
    )  # fmt: skip


def _official(model: nn.Module, report: PatchReport, **options: Any) -> None:
    try:
        handle = apply_lmini_kernels_to_llava_mini(model, **options)
    except UnsupportedModelError as e:
        report.not_patched.append(("multimodal encoder", str(e)))
        return
    report._revert.append(handle.revert)
    report.patched += [
        "get_model().compressor -> FusedResampler (shared parameters, frozen fold)",
        "encode_images_mini, prepare_inputs_labels_for_multimodal -> FusedPreFusion (pruned last layer, "
        "batched video frames, vision-prefix cache)",
    ]
    report.not_patched.append(
        ("LLM attention", "left as is: set_attn_implementation would also switch the vision tower's attention and "
                          "transformers marks sub-configs as changed for good; call register_hf_attention() and "
                          "model.set_attn_implementation('lmini') yourself if wanted")
    )  # fmt: skip


def _minicpmv(model: nn.Module, report: PatchReport, **options: Any) -> None:
    freeze = options.get("freeze", options.get("freeze_compressor", True))
    try:
        handle = apply_lmini_kernels_to_minicpmv(model, freeze=freeze)
    except UnsupportedModelError as e:
        report.not_patched.append(("resampler", str(e)))
        return
    report._revert.append(handle.revert)
    report.patched.append(
        f"resampler -> FusedResampler ({handle.fused.layout!r} layout, shared parameters"
        + (", frozen fold)" if freeze else ")")
    )
    report.not_patched.append(("vpm, llm", "left as is (only the resampler has a fused op here)"))


def _is_hf_model(model: object) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _hf_attention(model: nn.Module, report: PatchReport, **_: Any) -> None:
    from transformers import PreTrainedModel

    from lmini_kernels.integrations.hf_attention import ATTN_IMPLEMENTATION, register_hf_attention

    before = model.config._attn_implementation
    if before == ATTN_IMPLEMENTATION:
        report.not_patched.append(("attention", f"already attn_implementation={ATTN_IMPLEMENTATION!r}"))
        return
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}
    saved = {k: (c._attn_implementation, hasattr(c, "_attn_was_changed")) for k, c in configs.items()}
    register_hf_attention()

    def undo() -> None:
        for k, c in configs.items():
            impl, had_flag = saved[k]
            c._attn_implementation_internal = impl
            if not had_flag and hasattr(c, "_attn_was_changed"):
                del c._attn_was_changed

    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (ValueError, TypeError, ImportError) as e:
        undo()
        report.not_patched.append(("attention", f"set_attn_implementation('lmini') refused: {e}"))
        return
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        undo()
        report.not_patched.append(
            ("attention", f"{type(model).__name__} does not support a settable attention implementation")
        )
        return
    report._revert.append(undo)
    report.patched.append(f"attention: {before!r} -> {ATTN_IMPLEMENTATION!r} (prefusion_attention)")


#: (kind, detector, apply): the first detector that matches decides
_DETECTORS: list[tuple[str, Callable[[object], bool], Callable[..., None]]] = [
    ("reference LLaVA-Mini", _is_reference_llava_mini, _reference),
    ("official LLaVA-Mini", is_official_llava_mini, _official),
    ("MiniCPM-V", is_minicpmv, _minicpmv),
    ("Hugging Face model", _is_hf_model, _hf_attention),
]


def apply_lmini_kernels(model: nn.Module, **options: Any) -> PatchReport:
    """Detect ``model`` and apply the lmini patches that fit it (module docstring).

    Args:
        model: any ``nn.Module``.
        **options: passed to :func:`apply_lmini_kernels_to_llava_mini` for the official
            LLaVA-Mini (``backend``, ``freeze_compressor``, ``prefix_cache_size``,
            ``video_chunk_frames``); MiniCPM-V takes ``freeze`` (or ``freeze_compressor``).

    Returns:
        a :class:`PatchReport` (``print`` it): what was patched, what was not and why, and
        ``.revert()``.
    """
    for kind, detect, apply in _DETECTORS:
        if detect(model):
            report = PatchReport(type(model).__name__, kind)
            apply(model, report, **options)
            return report
    report = PatchReport(type(model).__name__, "unknown")
    report.not_patched.append(
        ("everything", "neither LLaVA-Mini (official or reference), MiniCPM-V nor a Hugging Face PreTrainedModel")
    )
    return report
