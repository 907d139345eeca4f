"""Integrations with other libraries; each imports its library lazily, inside its functions.

- :func:`register_hf_attention`: ``attn_implementation="lmini"`` for Hugging Face transformers
  models, over :func:`lmini_kernels.prefusion_attention`.
"""

from lmini_kernels.integrations.hf_attention import ATTN_IMPLEMENTATION, lmini_attention_forward, register_hf_attention

__all__ = ["ATTN_IMPLEMENTATION", "lmini_attention_forward", "register_hf_attention"]
