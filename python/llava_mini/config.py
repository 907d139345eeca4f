"""Configurations of the reference LLaVA-Mini model.

A :class:`LlavaMiniConfig` bundles the CLIP vision tower (:class:`VisionConfig`), the LLaMA
language model (:class:`TextConfig`) and the LLaVA-Mini specific fields (compressor grid
size ``C``, number of pre-fusion layers, ``resolution_ratio``). ``compressor_size=None``
describes the LLaVA-v1.5 baseline: every CLIP patch token goes straight to the LLM, with no
compressor and no pre-fusion layers.

The 7B/8B numbers follow the public configs: CLIP ViT-L/14-336
(``openai/clip-vit-large-patch14-336``), Vicuna-7B v1.5 and LLaMA-3.1-8B-Instruct. The
compressor width and head count (embed_dim = CLIP width, 8 heads) and the default of 4
pre-fusion layers follow the official ``build_compressor``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["VisionConfig", "RopeScaling", "TextConfig", "LlavaMiniConfig", "IMAGE_TOKEN_INDEX"]

#: Placeholder id of the image in ``input_ids`` (same value as the official ``constants.py``).
IMAGE_TOKEN_INDEX = -200


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower (HF ``CLIPVisionConfig`` field meanings)."""

    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    #: ``mm_vision_select_layer``: index into the hidden-state tuple (embeddings first).
    select_layer: int = -2

    @property
    def grid_size(self) -> int:
        """Patches per side (24 for 336 px / 14 px)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image, CLS excluded (576 for ViT-L/14-336)."""
        return self.grid_size**2

    @property
    def num_layers_used(self) -> int:
        """How many encoder layers must run to produce ``hidden_states[select_layer]``."""
        idx = self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer
        if not 0 <= idx <= self.num_layers:
            raise ValueError(f"select_layer {self.select_layer} out of range for {self.num_layers} layers")
        return idx


@dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3.1 ("llama3") RoPE frequency scaling."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class TextConfig:
    """LLaMA decoder (HF ``LlamaConfig`` field meanings)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide into num_heads, num_heads into num_kv_heads")


@dataclass(frozen=True)
class LlavaMiniConfig:
    """Whole-model configuration; build one with :meth:`from_name`."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    #: Compressor grid side C (C*C vision tokens reach the LLM); ``None`` = LLaVA-v1.5 baseline.
    compressor_size: int | None = 1
    compressor_heads: int = 8
    prefusion_layers: int = 4
    #: Official ``resolution_ratio``: the image is split ratio x ratio (+ the global view).
    resolution_ratio: int = 1
    projector_type: str = "mlp2x_gelu"

    def __post_init__(self) -> None:
        if self.projector_type != "mlp2x_gelu":
            raise ValueError(f"only the mlp2x_gelu projector is implemented, got {self.projector_type!r}")
        if self.compressor_size is not None and self.vision.hidden_size % self.compressor_heads:
            raise ValueError("the compressor width (CLIP hidden size) must divide into compressor_heads")
        if self.compressor_size is None and self.resolution_ratio != 1:
            raise ValueError("the high-resolution path exists only with a compressor (LLaVA-Mini-HD)")

    @property
    def is_mini(self) -> bool:
        """True for LLaVA-Mini (compressor + pre-fusion), False for the LLaVA-v1.5 baseline."""
        return self.compressor_size is not None

    @property
    def num_queries(self) -> int:
        """C*C compressed tokens per image (0 for the baseline)."""
        return 0 if self.compressor_size is None else self.compressor_size**2

    @property
    def image_parts(self) -> int:
        """Sub-images per image: 1, or ratio**2 crops plus the global view."""
        r = self.resolution_ratio
        return 1 if r == 1 else r * r + 1

    @property
    def compressor_grid(self) -> int:
        """Side of the key grid the compressor reads (24, or 48 for HD with ratio 2)."""
        return self.resolution_ratio * self.vision.grid_size

    @property
    def llm_tokens_per_image(self) -> int:
        """Vision tokens that reach the LLM for one image (or one video frame)."""
        return self.num_queries if self.is_mini else self.vision.num_patches

    @property
    def prefusion_vision_tokens(self) -> int:
        """Vision rows in front of the text in the pre-fusion input (excluding the C*C rows)."""
        n = self.vision.num_patches
        return n if self.resolution_ratio == 1 else self.resolution_ratio**2 * n + n

    def replace(self, **changes: object) -> LlavaMiniConfig:
        """A copy with some top-level fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: dict, name: str = "from-hf-config") -> LlavaMiniConfig:
        """Read an official ``config.json`` (HF ``LlamaConfig`` fields plus ``compressor_size``,
        ``prefusion_layer_num``, ``resolution_ratio``, ``mm_*``). The vision tower is not
        described there beyond its name; CLIP ViT-L/14-336 is assumed (both official towers)."""
        scaling = hf.get("rope_scaling")
        rope = None
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "llama3":
                raise ValueError(f"unsupported rope_scaling type {kind!r}")
            rope = RopeScaling(
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
            )
        heads = hf["num_attention_heads"]
        text = TextConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            rope_scaling=rope,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            pad_token_id=hf.get("pad_token_id") or 0,
        )
        tower = hf.get("mm_vision_tower", "openai/clip-vit-large-patch14-336")
        if "336" not in tower or "large" not in tower:
            raise ValueError(f"only CLIP ViT-L/14-336 is described here, config names {tower!r}")
        vision = dataclasses.replace(CLIP_L14_336, select_layer=hf.get("mm_vision_select_layer", -2))
        if hf.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
            raise ValueError("mm_hidden_size does not match the CLIP tower")
        mini = "compressor_size" in hf
        return cls(
            name=name,
            vision=vision,
            text=text,
            compressor_size=hf["compressor_size"] if mini else None,
            prefusion_layers=hf.get("prefusion_layer_num", 4) if mini else 0,
            resolution_ratio=hf.get("resolution_ratio", 1) if mini else 1,
            projector_type=hf.get("mm_projector_type", "mlp2x_gelu"),
        )

    @classmethod
    def names(cls) -> list[str]:
        """All names accepted by :meth:`from_name`."""
        return list(_CONFIGS)

    @classmethod
    def from_name(cls, name: str) -> LlavaMiniConfig:
        """The named configuration (``tiny``, ``llava-v1.5-7b``, ``llava-mini-vicuna-7b``, ...)."""
        try:
            return _CONFIGS[name]()
        except KeyError:
            raise ValueError(f"unknown config {name!r}; known: {', '.join(_CONFIGS)}") from None


CLIP_L14_336 = VisionConfig()
VICUNA_7B = TextConfig()
LLAMA31_8B = TextConfig(
    vocab_size=128256,
    intermediate_size=14336,
    num_kv_heads=8,
    rope_theta=500000.0,
    rope_scaling=RopeScaling(),
    max_position_embeddings=131072,
    pad_token_id=0,
)

# Tiny: 28 px images of 7 px patches (a 4 x 4 grid = 16 patch tokens), 3 CLIP layers of
# which the first 2 are used, a 2-layer GQA LLaMA (4 query heads, 2 KV heads).
TINY_VISION = VisionConfig(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2)
TINY_TEXT = TextConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=512,
)


def _tiny(**kw: object) -> LlavaMiniConfig:
    base = dict(vision=TINY_VISION, text=TINY_TEXT, compressor_size=1, compressor_heads=4, prefusion_layers=2)
    base.update(kw)
    return LlavaMiniConfig(**base)  # type: ignore[arg-type]


_CONFIGS = {
    "tiny": lambda: _tiny(name="tiny"),
    "tiny-c2": lambda: _tiny(name="tiny-c2", compressor_size=2),
    "tiny-hd": lambda: _tiny(name="tiny-hd", compressor_size=2, resolution_ratio=2),
    "tiny-baseline": lambda: _tiny(name="tiny-baseline", compressor_size=None, prefusion_layers=0),
    "tiny-llama3": lambda: _tiny(
        name="tiny-llama3",
        text=dataclasses.replace(
            TINY_TEXT, rope_theta=500000.0, rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64)
        ),
    ),
    "llava-v1.5-7b": lambda: LlavaMiniConfig(
        name="llava-v1.5-7b", vision=CLIP_L14_336, text=VICUNA_7B, compressor_size=None, prefusion_layers=0
    ),
    "llava-mini-vicuna-7b": lambda: LlavaMiniConfig(name="llava-mini-vicuna-7b", vision=CLIP_L14_336, text=VICUNA_7B),
    "llava-mini-hd-vicuna-7b": lambda: LlavaMiniConfig(
        name="llava-mini-hd-vicuna-7b", vision=CLIP_L14_336, text=VICUNA_7B, compressor_size=8, resolution_ratio=2
    ),
    "llava-mini-llama3.1-8b": lambda: LlavaMiniConfig(
        name="llava-mini-llama3.1-8b", vision=CLIP_L14_336, text=LLAMA31_8B
    ),
}
