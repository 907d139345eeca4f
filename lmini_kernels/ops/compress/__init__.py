"""Compression: LLaVA-Mini's query-based cross-attention (the official ``Resampler``)."""

from lmini_kernels.ops.compress.api import compress
from lmini_kernels.ops.compress.positions import compress_positions, get_2d_sincos_pos_embed
from lmini_kernels.ops.compress.weights import CompressWeights

__all__ = ["CompressWeights", "compress", "compress_positions", "get_2d_sincos_pos_embed"]
