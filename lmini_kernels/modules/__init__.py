"""Drop-in ``nn.Module`` replacements for LLaVA-Mini's components, built on the library's ops."""

from lmini_kernels.modules.prefusion import FusedPreFusion, PrefusionCache
from lmini_kernels.modules.resampler import FusedResampler

__all__ = ["FusedPreFusion", "FusedResampler", "PrefusionCache"]
