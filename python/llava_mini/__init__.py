"""Reference LLaVA-Mini in plain PyTorch (CLIP ViT, Resampler compressor, mlp2x_gelu projector,
pre-fusion LLaMA layers, LLaMA LLM with a KV cache).

>>> from llava_mini import LlavaMiniConfig, LlavaMini
>>> model = LlavaMini(LlavaMiniConfig.from_name("tiny")).init_random_weights(0)
"""

from .config import IMAGE_TOKEN_INDEX, LlavaMiniConfig, RopeScaling, TextConfig, VisionConfig
from .model import LlavaMini, MultimodalInputs, Resampler, num_parameters, retile_hd
from .weights import CheckpointError, WeightLoadError, load_weights, save_weights

__all__ = [
    "IMAGE_TOKEN_INDEX",
    "LlavaMini",
    "LlavaMiniConfig",
    "MultimodalInputs",
    "Resampler",
    "RopeScaling",
    "TextConfig",
    "VisionConfig",
    "CheckpointError",
    "WeightLoadError",
    "load_weights",
    "num_parameters",
    "retile_hd",
    "save_weights",
]
