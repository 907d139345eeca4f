"""Integrations with other libraries and models; each imports its library lazily, inside its functions.

- :func:`apply_lmini_kernels`: one entry point; detects the model and applies what fits
  (returns a :class:`PatchReport` with ``.revert()``).
- :func:`apply_lmini_kernels_to_llava_mini`: the fused compressor and pre-fusion inside an
  instance of the official LLaVA-Mini (``LlavaMiniLlamaForCausalLM``), found by structure.
- :func:`apply_lmini_kernels_to_minicpmv`: the fused compressor as ``model.resampler`` of a
  MiniCPM-V instance (hub remote code), sharing its parameters.
- :func:`register_hf_attention`: ``attn_implementation="lmini"`` for Hugging Face transformers
  models, over :func:`lmini_kernels.prefusion_attention`.
"""

from lmini_kernels.integrations.auto import PatchReport, apply_lmini_kernels
from lmini_kernels.integrations.hf_attention import ATTN_IMPLEMENTATION, lmini_attention_forward, register_hf_attention
from lmini_kernels.integrations.llava_mini_official import (
    LlavaMiniPatch,
    UnsupportedModelError,
    apply_lmini_kernels_to_llava_mini,
    is_official_llava_mini,
    revert_lmini_kernels,
)
from lmini_kernels.integrations.minicpmv import MiniCPMVPatch, apply_lmini_kernels_to_minicpmv, is_minicpmv

__all__ = [
    "ATTN_IMPLEMENTATION",
    "LlavaMiniPatch",
    "MiniCPMVPatch",
    "PatchReport",
    "UnsupportedModelError",
    "apply_lmini_kernels",
    "apply_lmini_kernels_to_llava_mini",
    "apply_lmini_kernels_to_minicpmv",
    "is_minicpmv",
    "is_official_llava_mini",
    "lmini_attention_forward",
    "register_hf_attention",
    "revert_lmini_kernels",
]
