"""Pre-fusion attention: causal attention of text rows over a vision prefix."""

from lmini_kernels.ops.prefusion_attention.api import prefusion_attention

__all__ = ["prefusion_attention"]
