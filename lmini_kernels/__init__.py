"""lmini-kernels: fused kernels for LLaVA-Mini-style large multimodal models.

Every op has a plain-PyTorch reference and CPU (C++/OpenMP), Triton and CUDA backends,
chosen by ``backend="auto"`` or named explicitly; see :func:`available_backends`.
"""

from lmini_kernels._ext import build_info
from lmini_kernels.dispatch import NotSupportedError, available_backends
from lmini_kernels.modules import FusedPreFusion, FusedResampler
from lmini_kernels.ops.compress import CompressWeights, compress, compress_positions, get_2d_sincos_pos_embed
from lmini_kernels.ops.prefusion_attention import prefusion_attention
from lmini_kernels.ops.row_softmax import row_softmax

__version__ = "0.1.0"

__all__ = [
    "CompressWeights",
    "FusedPreFusion",
    "FusedResampler",
    "NotSupportedError",
    "__version__",
    "available_backends",
    "build_info",
    "compress",
    "compress_positions",
    "get_2d_sincos_pos_embed",
    "prefusion_attention",
    "row_softmax",
]
