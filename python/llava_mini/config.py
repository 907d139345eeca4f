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
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lmini_kernels.checks import check_int, check_positive_float

__all__ = [
    "VisionConfig",
    "RopeScaling",
    "TextConfig",
    "LlavaMiniConfig",
    "IMAGE_TOKEN_INDEX",
    "DEFAULT_VISION_TOWER",
    "read_vision_tower_config",
]

#: Placeholder id of the image in ``input_ids`` (same value as the official ``constants.py``).
IMAGE_TOKEN_INDEX = -200
#: ``mm_projector_type`` values built here (the official ``build_vision_projector``'s ``linear``
#: and ``mlp2x_gelu``).
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
#: ``mm_vision_select_feature`` values (the official ``CLIPVisionTower.feature_select``).
SELECT_FEATURES = ("patch", "cls_patch")


def _int(owner: str, name: str, value: object, low: int = 1, high: int | None = None) -> None:
    """A ValueError naming ``owner.name``, its value and the allowed range unless ``value`` is an
    int (not a bool) in [low, high] (:func:`lmini_kernels.checks.check_int`)."""
    check_int(f"{owner}.{name}", value, minimum=low, maximum=high)


def _float(owner: str, name: str, value: object) -> None:
    """A ValueError naming ``owner.name`` unless ``value`` is a finite number > 0."""
    check_positive_float(f"{owner}.{name}", value)


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
    #: ``mm_vision_select_feature``: "patch" drops the CLS token, "cls_patch" keeps it first.
    select_feature: str = "patch"

    def __post_init__(self) -> None:
        o = "vision"
        for name in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_channels"):  # fmt: skip
            _int(o, name, getattr(self, name))
        _float(o, "layer_norm_eps", self.layer_norm_eps)
        if self.image_size % self.patch_size:
            raise ValueError(f"{o}.image_size: {self.image_size} is not a multiple of patch_size = {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{o}.hidden_size: {self.hidden_size} is not divisible by num_heads = {self.num_heads}")
        _int(o, "select_layer", self.select_layer, -(self.num_layers + 1), self.num_layers)
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"{o}.select_feature: expected one of {SELECT_FEATURES}, got {self.select_feature!r}")

    @property
    def grid_size(self) -> int:
        """Patches per side (24 for 336 px / 14 px)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image, CLS excluded (576 for ViT-L/14-336)."""
        return self.grid_size**2

    @property
    def num_features(self) -> int:
        """Feature tokens the tower gives per image: the patches, plus the CLS token with
        ``select_feature="cls_patch"``."""
        return self.num_patches + (self.select_feature == "cls_patch")

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

    def __post_init__(self) -> None:
        o = "text.rope_scaling"
        _float(o, "factor", self.factor)
        _float(o, "low_freq_factor", self.low_freq_factor)
        _float(o, "high_freq_factor", self.high_freq_factor)
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"{o}.high_freq_factor: expected > low_freq_factor = {self.low_freq_factor} (the llama3 ramp "
                f"divides by their difference), got {self.high_freq_factor!r}"
            )
        _int(o, "original_max_position_embeddings", self.original_max_position_embeddings)


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
        o = "text"
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "max_position_embeddings"):  # fmt: skip
            _int(o, name, getattr(self, name))
        _float(o, "rope_theta", self.rope_theta)
        _float(o, "rms_norm_eps", self.rms_norm_eps)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"{o}.rope_scaling: expected a RopeScaling or None, got {self.rope_scaling!r}")
        _int(o, "pad_token_id", self.pad_token_id, 0, self.vocab_size - 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{o}.hidden_size: {self.hidden_size} is not divisible by num_heads = {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{o}.num_heads: {self.num_heads} is not divisible by num_kv_heads = {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(
                f"{o}.hidden_size / num_heads = head_dim {self.head_dim} must be even (RoPE rotates pairs)"
            )


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
    #: Official ``mm_projector_type`` (:data:`PROJECTOR_TYPES`).
    projector_type: str = "mlp2x_gelu"
    #: Official ``tokenizer_model_max_length``: the spliced LLM input (text + vision tokens) is
    #: cut to this many tokens per sample, as the official ``prepare_inputs_labels_for_multimodal``
    #: does; ``None``: no cut.
    tokenizer_model_max_length: int | None = None
    #: The local CLIP folder ``mm_vision_tower`` names (absolute path), where the vision tower's
    #: weights and ``preprocessor_config.json`` come from when the checkpoint folder lacks them
    #: (the official release layout); ``None``: no such folder (a hub name, or a named config).
    vision_tower_dir: str | None = None
    #: Official ``mm_use_im_start_end``: the prompt wraps ``<image>`` in ``<im_start>``/``<im_end>``
    #: (:func:`llava_mini.prompt.build_prompt`).
    use_im_start_end: bool = False

    def __post_init__(self) -> None:
        if self.vision_tower_dir is not None and not isinstance(self.vision_tower_dir, str):
            raise ValueError(f"vision_tower_dir: expected a folder path (str) or None, got {self.vision_tower_dir!r}")
        if not isinstance(self.use_im_start_end, bool):
            raise ValueError(f"use_im_start_end: expected a bool, got {self.use_im_start_end!r}")
        if not isinstance(self.vision, VisionConfig):
            raise ValueError(f"vision: expected a VisionConfig, got {type(self.vision).__name__}")
        if not isinstance(self.text, TextConfig):
            raise ValueError(f"text: expected a TextConfig, got {type(self.text).__name__}")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type: expected one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        if self.tokenizer_model_max_length is not None:
            _int("config", "tokenizer_model_max_length", self.tokenizer_model_max_length)
        _int("config", "resolution_ratio", self.resolution_ratio)
        if self.compressor_size is None:
            if self.resolution_ratio != 1:
                raise ValueError("resolution_ratio: the high-resolution path exists only with a compressor (HD)")
            _int("config", "prefusion_layers", self.prefusion_layers, 0, 0)
            return
        _int("config", "compressor_size", self.compressor_size)
        if self.vision.select_feature != "patch":
            raise ValueError(
                f"vision.select_feature: {self.vision.select_feature!r} gives {self.vision.num_features} tokens, not "
                "a square grid; the compressor needs 'patch' (the official Resampler fails on it too)"
            )
        _int("config", "compressor_heads", self.compressor_heads)
        _int("config", "prefusion_layers", self.prefusion_layers, 0)  # 0: the paper's no-pre-fusion ablation
        if self.vision.hidden_size % self.compressor_heads:
            raise ValueError(
                f"compressor_heads: the compressor width (vision.hidden_size = {self.vision.hidden_size}) is not "
                f"divisible by {self.compressor_heads}"
            )

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
        return self.num_queries if self.is_mini else self.vision.num_features

    @property
    def prefusion_vision_tokens(self) -> int:
        """Vision rows in front of the text in the pre-fusion input (excluding the C*C rows)."""
        n = self.vision.num_patches
        return n if self.resolution_ratio == 1 else self.resolution_ratio**2 * n + n

    def replace(self, **changes: object) -> LlavaMiniConfig:
        """A copy with some top-level fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(
        cls, hf: dict, name: str = "from-hf-config", *, vision_tower: str | os.PathLike | None = None
    ) -> LlavaMiniConfig:
        """Read an official ``config.json`` (HF ``LlamaConfig`` fields plus ``compressor_size``,
        ``prefusion_layer_num``, ``resolution_ratio``, ``mm_*``, ``tokenizer_model_max_length``).

        The vision tower, as the official ``build_vision_tower``: ``mm_vision_tower`` (or the
        ``vision_tower`` argument, which replaces it: a local folder, e.g. a downloaded copy of
        the hub tower a released config names) naming a local folder is read from there
        (:func:`read_vision_tower_config`: its ``config.json``, a ``CLIPVisionConfig`` or a full
        ``CLIPConfig``; any CLIP size) and recorded in :attr:`vision_tower_dir`, where the
        weights and the processor settings come from when the checkpoint lacks them. Else a
        ``vision_config`` object (HF ``CLIPVisionConfig`` field names, as in HF's
        ``LlavaConfig``; this project's tiny checkpoints) describes it; else the name must be
        the official default ``openai/clip-vit-large-patch14-336`` (its last path component),
        whose size is known (nothing is downloaded: any other name is a ValueError). A folder and
        a ``vision_config`` that disagree are a ValueError. ``compressor_num_heads`` (the
        official code fixes 8 heads) serves narrow towers. ``mm_projector_type`` absent means
        ``linear``, as in the official builder.

        Every field is validated before anything is built: a missing required field or a value
        out of range is a ValueError naming it (and the file, for the tower folder's); fields
        this reader neither uses nor knows to be irrelevant are named in one warning."""
        if not isinstance(hf, dict):
            raise ValueError(f"config: expected a JSON object, got {type(hf).__name__}")
        missing = [k for k in _HF_REQUIRED if k not in hf]
        if missing:
            raise ValueError(f"config: missing required field(s) {', '.join(missing)}")
        unknown = sorted(k for k in hf if k not in _HF_READ and k not in _HF_IGNORED)
        if unknown:
            warnings.warn(f"config: fields not used by this reader: {', '.join(unknown)}", stacklevel=2)
        scaling = hf.get("rope_scaling")
        rope = None
        if scaling:
            if not isinstance(scaling, dict):
                raise ValueError(f"rope_scaling: expected an object or null, got {scaling!r}")
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "llama3":
                raise ValueError(f"rope_scaling: unsupported rope_scaling type {kind!r} (only 'llama3')")
            fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            absent = [f for f in fields if f not in scaling]
            if absent:
                raise ValueError(f"rope_scaling: missing field(s) {', '.join(absent)}")
            rope = RopeScaling(**{f: scaling[f] for f in fields})
        heads = hf["num_attention_heads"]
        text = TextConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            rope_theta=hf.get("rope_theta", 10000.0),
            rope_scaling=rope,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            pad_token_id=hf.get("pad_token_id") or 0,
        )
        select = {
            "select_layer": hf.get("mm_vision_select_layer", -2),
            "select_feature": hf.get("mm_vision_select_feature", "patch"),
        }
        vision, tower_dir = _vision_tower_from_hf(hf, vision_tower)
        vision = dataclasses.replace(vision, **select)
        mm_hidden = hf.get("mm_hidden_size", vision.hidden_size)
        if mm_hidden != vision.hidden_size:
            raise ValueError(f"mm_hidden_size: {mm_hidden!r} does not match the CLIP tower's {vision.hidden_size}")
        im_start_end = hf.get("mm_use_im_start_end", False)
        if not isinstance(im_start_end, bool):
            raise ValueError(f"mm_use_im_start_end: expected true or false, got {im_start_end!r}")
        mini = "compressor_size" in hf
        return cls(
            name=name,
            vision=vision,
            text=text,
            compressor_size=hf["compressor_size"] if mini else None,
            # official build_compressor: num_heads=8, fixed; this reader's field for other towers
            compressor_heads=hf.get("compressor_num_heads", 8),
            prefusion_layers=hf.get("prefusion_layer_num", 4) if mini else 0,
            resolution_ratio=hf.get("resolution_ratio", 1) if mini else 1,
            # official build_vision_projector: getattr(config, "mm_projector_type", "linear")
            projector_type=hf.get("mm_projector_type", "linear"),
            tokenizer_model_max_length=hf.get("tokenizer_model_max_length"),
            vision_tower_dir=tower_dir,
            use_im_start_end=im_start_end,
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


#: config.json fields :meth:`LlavaMiniConfig.from_hf_config` needs, reads, and knows to ignore
#: (HF bookkeeping, training-only and generation fields, and official fields without effect here).
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_HF_READ = frozenset(_HF_REQUIRED) | {
    "num_key_value_heads", "rope_theta", "rope_scaling", "rms_norm_eps", "max_position_embeddings", "pad_token_id",
    "mm_vision_tower", "mm_vision_select_layer", "mm_hidden_size", "compressor_size", "prefusion_layer_num",
    "resolution_ratio", "mm_projector_type", "mm_vision_select_feature", "tokenizer_model_max_length",
    "vision_config", "compressor_num_heads", "mm_use_im_start_end",
}  # fmt: skip
_HF_IGNORED = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "use_cache",
    "bos_token_id", "eos_token_id", "hidden_act", "initializer_range", "attention_bias", "attention_dropout",
    "mlp_bias", "pretraining_tp", "tie_word_embeddings", "head_dim", "freeze_mm_mlp_adapter", "image_aspect_ratio",
    "mm_patch_merge_type", "mm_projector_lr", "mm_use_im_patch_token",
    "tokenizer_padding_side", "tune_mm_mlp_adapter",
    "use_mm_proj", "image_grid_pinpoints", "unfreeze_mm_vision_tower", "mm_vision_tower_lr", "temporal_size",
    "cache_dir", "model_max_length",
})  # fmt: skip

#: ``vision_config`` field (HF ``CLIPVisionConfig``) -> :class:`VisionConfig` field.
_HF_VISION_FIELDS = {
    "image_size": "image_size", "patch_size": "patch_size", "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size", "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads", "num_channels": "num_channels", "layer_norm_eps": "layer_norm_eps",
}  # fmt: skip
_HF_VISION_IGNORED = frozenset({"model_type", "hidden_act", "projection_dim", "attention_dropout", "dropout",
                                "initializer_range", "initializer_factor", "torch_dtype", "dtype"})  # fmt: skip


#: HF ``CLIPVisionConfig``'s class defaults: what ``CLIPVisionConfig.from_pretrained`` uses for
#: a field a tower folder's ``config.json`` leaves out.
_CLIP_VISION_DEFAULTS = {
    "image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
}  # fmt: skip
#: The official default tower (``mm_vision_tower`` of both released LLaVA-Mini checkpoints),
#: whose size is known without its folder: :data:`CLIP_L14_336`.
DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14-336"
#: ``model_type`` of a tower folder's ``config.json``: a ``CLIPVisionConfig``, or a ``CLIPConfig``
#: whose ``vision_config`` is the tower's (what ``CLIPVisionModel.from_pretrained`` reads).
_TOWER_MODEL_TYPES = ("clip_vision_model", "clip")


def _vision_from_fields(vc: object, where: str, *, defaults: dict | None = None) -> VisionConfig:
    """A :class:`VisionConfig` (default ``select_*``) from HF ``CLIPVisionConfig`` fields.
    ``defaults`` None (an embedded ``vision_config``): every size field is required except
    ``num_channels`` and ``layer_norm_eps``, and unknown fields are refused; else (a tower
    folder's file, which also holds HF's generic fields): absent fields take ``defaults``, other
    fields are not looked at. ``where`` names the object in the messages (``file: field``)."""
    if not isinstance(vc, dict):
        raise ValueError(f"{where}: expected an object, got {vc!r}")
    sep = "." if where.endswith("vision_config") else ": "
    if defaults is None:
        missing = [k for k in _HF_VISION_FIELDS if k not in vc and k not in ("num_channels", "layer_norm_eps")]
        if missing:
            raise ValueError(f"{where}: missing required field(s) {', '.join(missing)}")
        unknown = sorted(k for k in vc if k not in _HF_VISION_FIELDS and k not in _HF_VISION_IGNORED)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        defaults = {"num_channels": 3, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}
    values = {k: vc.get(k, defaults.get(k)) for k in (*_HF_VISION_FIELDS, "hidden_act")}
    for hf_name in _HF_VISION_FIELDS:
        check = check_positive_float if hf_name == "layer_norm_eps" else check_int
        check(f"{where}{sep}{hf_name}", values[hf_name])
    if values["hidden_act"] != "quick_gelu":
        raise ValueError(f"{where}{sep}hidden_act: only 'quick_gelu' (CLIP's) is built, got {values['hidden_act']!r}")
    try:
        return VisionConfig(**{ours: values[hf] for hf, ours in _HF_VISION_FIELDS.items()})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def read_json_file(path: str | os.PathLike) -> object:
    """The JSON document in ``path``; unreadable, not UTF-8 or not JSON: a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def read_vision_tower_config(folder: str | os.PathLike) -> VisionConfig:
    """The vision tower's size in a local CLIP folder's ``config.json`` (default ``select_*``):
    a ``CLIPVisionConfig`` (``model_type`` ``clip_vision_model``) or a full ``CLIPConfig``
    (``clip``: its ``vision_config``), fields absent taking HF's ``CLIPVisionConfig`` defaults as
    ``CLIPVisionModel.from_pretrained`` does. A missing folder or file, bad JSON, another
    ``model_type`` or a bad field is a ValueError naming the file and the field."""
    d = Path(folder)
    if not d.is_dir():
        raise ValueError(f"vision tower folder {str(d)!r}: not a directory")
    path = d / "config.json"
    if not path.is_file():
        raise ValueError(f"vision tower folder {str(d)!r}: no config.json (the CLIP tower's CLIPVisionConfig)")
    doc = read_json_file(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    kind = doc.get("model_type", "clip" if "vision_config" in doc else "clip_vision_model")
    if kind not in _TOWER_MODEL_TYPES:
        raise ValueError(f"{path}: model_type: expected one of {_TOWER_MODEL_TYPES} (a CLIP tower), got {kind!r}")
    if kind == "clip":
        if "vision_config" not in doc:
            raise ValueError(f"{path}: vision_config: missing (a CLIPConfig describes its tower there)")
        return _vision_from_fields(doc["vision_config"], f"{path}: vision_config", defaults=_CLIP_VISION_DEFAULTS)
    return _vision_from_fields(doc, str(path), defaults=_CLIP_VISION_DEFAULTS)


def _vision_tower_from_hf(hf: dict, override: str | os.PathLike | None) -> tuple[VisionConfig, str | None]:
    """The tower's :class:`VisionConfig` (default ``select_*``) and its local folder (or None),
    from ``mm_vision_tower`` / ``override`` and ``vision_config`` (see ``from_hf_config``)."""
    if override is not None:
        if not isinstance(override, (str, os.PathLike)) or not Path(override).is_dir():
            raise ValueError(f"vision_tower: expected a local CLIP folder, got {override!r} (not a directory)")
        tower: object = os.fspath(override)
        field_name = "vision_tower"
    else:
        tower = hf.get("mm_vision_tower", DEFAULT_VISION_TOWER)
        field_name = "mm_vision_tower"
    if not isinstance(tower, str) or not tower:
        raise ValueError(f"{field_name}: expected a CLIP folder or name, got {tower!r}")
    embedded = _vision_from_fields(hf["vision_config"], "vision_config") if "vision_config" in hf else None
    if os.path.isdir(tower):  # the official build_vision_tower: os.path.exists, relative to the cwd
        folder = str(Path(tower).resolve())
        vision = read_vision_tower_config(folder)
        if embedded is not None and embedded != vision:
            diff = next(
                f.name for f in dataclasses.fields(vision) if getattr(vision, f.name) != getattr(embedded, f.name)
            )
            raise ValueError(
                f"vision_config: {diff} = {getattr(embedded, diff)!r} disagrees with the vision tower folder's "
                f"{Path(folder) / 'config.json'} ({getattr(vision, diff)!r})"
            )
        return vision, folder
    if embedded is not None:
        return embedded, None
    if Path(tower.rstrip("/\\")).name == Path(DEFAULT_VISION_TOWER).name:
        return CLIP_L14_336, None
    raise ValueError(
        f"{field_name}: {tower!r} is not a local folder and not the default {DEFAULT_VISION_TOWER!r} (nothing is "
        "downloaded: point it at a local CLIP folder, or describe the tower in a 'vision_config' object)"
    )


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
