"""Image inputs of the reference model, prepared as the official LLaVA-Mini code prepares them.

The official pipeline (``llavamini/eval/run_llava_mini.py``, ``llavamini/eval/model_vqa_loader.py``,
``llavamini/mm_utils.py`` at commit 47da113, plus the HF ``CLIPImageProcessor`` it calls) is,
for one image file:

1. ``Image.open(path).convert("RGB")``: alpha is dropped (not composited), greyscale replicated,
   a palette looked up.
2. HD (``resolution_ratio`` r > 1, ``split_image``): r*r crops of ``(w // r, h // r)`` pixels,
   row-major (block row i, block column j at ``(j*bw, i*bh)``), then the whole image appended
   last. r == 1: the image alone.
3. Per part, when the model config's ``image_aspect_ratio`` is ``"pad"`` (``process_images`` +
   ``expand2square``): pad to a square of side ``max(w, h)`` with the colour
   ``int(mean * 255)`` per channel (truncated: (122, 116, 104) for CLIP), the image pasted at
   ``(0, (w - h) // 2)`` (wide) or ``((h - w) // 2, 0)`` (tall). Any other value: no padding.
4. ``CLIPImageProcessor`` (its ``preprocessor_config.json``): resize with PIL (``resample``,
   bicubic for CLIP) on the uint8 image, ``shortest_edge`` s giving a short side of s and a long
   side of ``int(s * long / short)`` (or an explicit height x width); centre crop at
   ``((H - ch) // 2, (W - cw) // 2)`` (zero-padded when the image is smaller); then
   ``float32(float64(x) * rescale_factor)``; then ``(x - mean) / std`` in float32;
   channels first.

The result is what :class:`llava_mini.LlavaMini` takes: ``(B, parts, 3, H, W)`` float32,
parts = 1, or ratio**2 + 1 with the global view last.

Needs Pillow (``pip install lmini-kernels[image]``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from lmini_kernels.checks import check_int, check_positive_float

from .config import read_json_file

try:
    from PIL import Image, UnidentifiedImageError
except ImportError as e:  # pragma: no cover - Pillow is pinned in .ci/requirements.txt
    raise ImportError("llava_mini.preprocess needs Pillow: pip install 'lmini-kernels[image]'") from e

__all__ = [
    "MediaError",
    "ImageProcessorConfig",
    "ImagePreprocessor",
    "load_image",
    "expand2square",
    "split_image",
    "clip_preprocess",
    "image_parts",
    "preprocess_images",
    "PROCESSOR_CONFIG_FILE",
]

#: File name of an HF image processor's settings in a checkpoint (or vision tower) folder.
PROCESSOR_CONFIG_FILE = "preprocessor_config.json"

#: PIL resampling filters by their HF/PIL integer code (``PIL.Image.Resampling``).
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

ImageSource = Union[str, os.PathLike, "Image.Image"]


class MediaError(ValueError):
    """An image or video file that cannot be used: missing, unreadable, corrupt or unsupported.
    The message names the file."""


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The settings of an HF ``CLIPImageProcessor`` (field meanings as in its
    ``preprocessor_config.json``). Defaults: ``openai/clip-vit-large-patch14-336``.

    ``shortest_edge`` and ``resize_hw`` are the two forms of HF's ``size``: exactly one is set
    (``{"shortest_edge": s}`` or a bare int, versus ``{"height": h, "width": w}``).
    ``crop_size`` is (height, width).
    """

    do_resize: bool = True
    shortest_edge: int | None = 336
    resize_hw: tuple[int, int] | None = None
    resample: int = 3
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (336, 336)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self) -> None:
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if (self.shortest_edge is None) == (self.resize_hw is None):
            raise ValueError("size: expected exactly one of shortest_edge or (height, width)")
        if self.shortest_edge is not None:
            check_int("size.shortest_edge", self.shortest_edge)
        if self.resize_hw is not None:
            _pair("size", self.resize_hw)
        _pair("crop_size", self.crop_size)
        if isinstance(self.resample, bool) or self.resample not in _RESAMPLE_NAMES:
            raise ValueError(f"resample: expected a PIL filter code {sorted(_RESAMPLE_NAMES)}, got {self.resample!r}")
        check_positive_float("rescale_factor", self.rescale_factor)
        _rgb_triple("image_mean", self.image_mean)
        _rgb_triple("image_std", self.image_std)
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std: expected 3 positive numbers, got {list(self.image_std)}")

    @classmethod
    def for_image_size(cls, size: int) -> ImageProcessorConfig:
        """CLIP's settings with the resize and crop set to ``size`` (e.g. a tiny test model's 28 px)."""
        check_int("size", size)
        return cls(shortest_edge=size, crop_size=(size, size))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "processor config") -> ImageProcessorConfig:
        """Read the fields of an HF ``preprocessor_config.json`` (both the old and the new forms
        of ``size`` / ``crop_size``). Missing fields take CLIP's defaults; unknown fields (e.g.
        ``image_processor_type``) are ignored; a bad field is a ValueError naming it and ``source``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        kw: dict[str, Any] = {}
        try:
            for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
                if name in data:
                    kw[name] = data[name]
            if "size" in data:
                size = data["size"]
                if isinstance(size, Mapping) and set(size) == {"shortest_edge"}:
                    kw["shortest_edge"], kw["resize_hw"] = size["shortest_edge"], None
                elif isinstance(size, Mapping) and set(size) == {"height", "width"}:
                    kw["shortest_edge"], kw["resize_hw"] = None, (size["height"], size["width"])
                elif _is_int(size):
                    kw["shortest_edge"], kw["resize_hw"] = size, None
                else:
                    raise ValueError(
                        "size: expected an int, {'shortest_edge': int} or {'height': int, 'width': int}, "
                        f"got {size!r}"
                    )
            if "crop_size" in data:
                crop = data["crop_size"]
                if isinstance(crop, Mapping) and set(crop) == {"height", "width"}:
                    kw["crop_size"] = (crop["height"], crop["width"])
                elif _is_int(crop):
                    kw["crop_size"] = (crop, crop)
                else:
                    raise ValueError(f"crop_size: expected an int or {{'height': int, 'width': int}}, got {crop!r}")
            if "resample" in data:
                kw["resample"] = data["resample"]
            if "rescale_factor" in data:
                kw["rescale_factor"] = data["rescale_factor"]
            for name in ("image_mean", "image_std"):
                if name in data:
                    value = data[name]
                    if not isinstance(value, (list, tuple)):
                        raise ValueError(f"{name}: expected a list of 3 numbers, got {value!r}")
                    kw[name] = tuple(value)
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ImageProcessorConfig:
        """The settings in ``folder/preprocessor_config.json``; CLIP ViT-L/14-336's when the
        folder has no such file. A folder that does not exist, unreadable or invalid JSON, or a
        bad field is a ValueError naming the file (and the field)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"checkpoint folder {str(folder)!r}: not a directory")
        path = folder / PROCESSOR_CONFIG_FILE
        if not path.exists():
            return cls()
        return cls.from_dict(read_json_file(path), source=str(path))

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The official ``expand2square`` colour: ``int(mean * 255)`` per channel (truncated)."""
        return tuple(int(m * 255) for m in self.image_mean)  # type: ignore[return-value]

    @property
    def resample_name(self) -> str:
        """The PIL filter's name (``"bicubic"`` for CLIP)."""
        return _RESAMPLE_NAMES[self.resample]

    def resize_output_hw(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after the resize step (HF ``get_resize_output_image_size``)."""
        if self.resize_hw is not None:
            return self.resize_hw
        s = self.shortest_edge
        if width <= height:
            return int(s * height / width), s
        return s, int(s * width / height)


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _pair(name: str, v: object) -> None:
    if not isinstance(v, tuple) or len(v) != 2 or not all(_is_int(x) and x >= 1 for x in v):
        raise ValueError(f"{name}: expected a positive (height, width), got {v!r}")


def _rgb_triple(name: str, v: object) -> None:
    ok = isinstance(v, tuple) and len(v) == 3
    ok = ok and all(not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) for x in v)
    if not ok:
        raise ValueError(f"{name}: expected 3 finite numbers (R, G, B), got {v!r}")


def load_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a file path or a PIL image, as the official ``load_image``:
    ``.convert("RGB")`` (alpha dropped without compositing, greyscale replicated, palette looked
    up). A missing, unreadable or corrupt file is a :class:`MediaError` naming it."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"image: expected a file path or a PIL image, got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise MediaError(f"image file {path!r}: not found")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() loads the pixels: decoding errors surface here
    except UnidentifiedImageError:
        raise MediaError(f"image file {path!r}: not an image format Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"image file {path!r}: cannot decode ({e})") from None


def expand2square(img: Image.Image, color: tuple[int, ...]) -> Image.Image:
    """Pad ``img`` to a square of side max(w, h) filled with ``color``, the image centred with
    the official offset ``(side - short) // 2`` on the short axis. A square image is returned as is."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def split_image(img: Image.Image, ratio: int) -> list[Image.Image]:
    """The official HD split: ``ratio * ratio`` crops of (w // ratio) x (h // ratio) pixels,
    row-major (crop i*ratio + j has its corner at (j * bw, i * bh); leftover edge pixels are
    dropped), then the whole image last. ``ratio == 1``: ``[img]``."""
    check_int("resolution_ratio", ratio)
    if ratio == 1:
        return [img]
    w, h = img.size
    bw, bh = w // ratio, h // ratio
    if bw < 1 or bh < 1:
        raise ValueError(f"image of {w} x {h} pixels is too small to split {ratio} x {ratio}")
    crops = [img.crop((j * bw, i * bh, (j + 1) * bw, (i + 1) * bh)) for i in range(ratio) for j in range(ratio)]
    return crops + [img]


def clip_preprocess(img: Image.Image, cfg: ImageProcessorConfig) -> torch.Tensor:
    """One RGB PIL image through ``CLIPImageProcessor.preprocess`` -> (3, H, W) float32: PIL
    resize on uint8, centre crop, ``float32(float64(x) * rescale_factor)``, ``(x - mean) / std``
    in float32 (the HF operation order and precisions)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if cfg.do_resize:
        h, w = cfg.resize_output_hw(*img.size)
        img = img.resize((w, h), resample=cfg.resample)  # Pillow returns a copy when the size is unchanged
    x = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    if cfg.do_center_crop:
        x = _center_crop(x, *cfg.crop_size)
    y = x.astype(np.float64) * cfg.rescale_factor if cfg.do_rescale else x
    y = y.astype(np.float32)
    if cfg.do_normalize:
        y = (y - np.asarray(cfg.image_mean, dtype=np.float32)) / np.asarray(cfg.image_std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))


def _center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """HF ``center_crop`` on an (H, W, C) array: top = (H - ch) // 2, left = (W - cw) // 2; a
    smaller image is first zero-padded (ceil of half the missing rows / columns before it)."""
    h, w = x.shape[:2]
    if ch > h or cw > w:
        nh, nw = max(ch, h), max(cw, w)
        top_pad, left_pad = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        padded = np.zeros((nh, nw) + x.shape[2:], dtype=x.dtype)
        padded[top_pad : top_pad + h, left_pad : left_pad + w] = x
        top, left = (h - ch) // 2 + top_pad, (w - cw) // 2 + left_pad
        return padded[max(0, top) : min(nh, top + ch), max(0, left) : min(nw, left + cw)]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top : top + ch, left : left + cw]


def _check_aspect(image_aspect_ratio: str) -> bool:
    """True when the official ``process_images`` pads (``"pad"``); ``anyres`` is LLaVA-NeXT's."""
    if not isinstance(image_aspect_ratio, str):
        raise TypeError(f"image_aspect_ratio: expected a string, got {type(image_aspect_ratio).__name__}")
    if image_aspect_ratio == "anyres":
        raise ValueError("image_aspect_ratio 'anyres' (LLaVA-NeXT tiling) is not used by LLaVA-Mini")
    return image_aspect_ratio == "pad"


def image_parts(
    img: Image.Image, cfg: ImageProcessorConfig, *, resolution_ratio: int = 1, image_aspect_ratio: str = "pad"
) -> torch.Tensor:
    """One RGB image -> (parts, 3, H, W): :func:`split_image`, each part padded to a square on
    its own (``image_aspect_ratio == "pad"``), then :func:`clip_preprocess`."""
    pad = _check_aspect(image_aspect_ratio)
    parts = split_image(img, resolution_ratio)
    if pad:
        parts = [expand2square(p, cfg.pad_color) for p in parts]
    out = [clip_preprocess(p, cfg) for p in parts]
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise ValueError(
            f"the parts of one image came out with different shapes {sorted(shapes)}; "
            "without a centre crop (do_center_crop false) only padded (image_aspect_ratio 'pad') parts match"
        )
    return torch.stack(out)


def preprocess_images(
    images: ImageSource | Sequence[ImageSource],
    cfg: ImageProcessorConfig | None = None,
    *,
    resolution_ratio: int = 1,
    image_aspect_ratio: str = "pad",
) -> torch.Tensor:
    """Images (file paths and/or PIL images; one or a sequence) -> (B, parts, 3, H, W) float32,
    parts = 1, or ``resolution_ratio**2 + 1`` with the global view last (what
    :meth:`llava_mini.LlavaMini.vision_prefix` takes). ``cfg``: CLIP ViT-L/14-336's when None."""
    cfg = ImageProcessorConfig() if cfg is None else cfg
    if not isinstance(cfg, ImageProcessorConfig):
        raise TypeError(f"cfg: expected an ImageProcessorConfig, got {type(cfg).__name__}")
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if not isinstance(images, Iterable):
        raise TypeError(f"images: expected a path, a PIL image or a sequence of them, got {type(images).__name__}")
    images = list(images)
    if not images:
        raise ValueError("images: expected at least one image, got an empty sequence")
    out = [
        image_parts(load_image(im), cfg, resolution_ratio=resolution_ratio, image_aspect_ratio=image_aspect_ratio)
        for im in images
    ]
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise ValueError(f"images: the processed images differ in shape {sorted(shapes)} and cannot form one batch")
    return torch.stack(out)


@dataclass(frozen=True)
class ImagePreprocessor:
    """The processor settings, HD ratio and padding rule of one model, checked against its input
    size. Build it with :meth:`for_model`; call it on images."""

    processor: ImageProcessorConfig
    resolution_ratio: int = 1
    image_aspect_ratio: str = "pad"

    def __post_init__(self) -> None:
        check_int("resolution_ratio", self.resolution_ratio)
        _check_aspect(self.image_aspect_ratio)

    @classmethod
    def for_model(
        cls, config: Any, checkpoint: str | os.PathLike | None = None, *, image_aspect_ratio: str | None = None
    ) -> ImagePreprocessor:
        """For a :class:`llava_mini.LlavaMiniConfig`: the processor of ``checkpoint`` (its
        ``preprocessor_config.json``; else, in the official release layout, that of the vision
        tower folder, ``config.vision_tower_dir``, where the official ``CLIPImageProcessor``
        comes from; else CLIP-L/14-336's, or with no ``checkpoint`` CLIP's settings at the
        model's image size), the config's ``resolution_ratio``, and ``image_aspect_ratio``
        (given; else the checkpoint's ``config.json`` field, a config.json without it meaning no
        padding as in the official ``getattr(model_cfg, "image_aspect_ratio", None)``; else
        ``"pad"``). The processor's output must be the vision tower's ``image_size`` square,
        else a ValueError."""
        size = config.vision.image_size
        tower = getattr(config, "vision_tower_dir", None)
        in_tower = tower is not None and (Path(tower) / PROCESSOR_CONFIG_FILE).is_file()
        if checkpoint is None:
            proc = (
                ImageProcessorConfig.from_pretrained(tower) if in_tower else ImageProcessorConfig.for_image_size(size)
            )
        else:
            ck = Path(checkpoint)
            if in_tower and ck.is_dir() and not (ck / PROCESSOR_CONFIG_FILE).exists():
                proc = ImageProcessorConfig.from_pretrained(tower)
            else:
                proc = ImageProcessorConfig.from_pretrained(ck)
            if image_aspect_ratio is None:
                image_aspect_ratio = _aspect_from_checkpoint(ck)
        if not proc.do_center_crop or proc.crop_size != (size, size):
            raise ValueError(
                f"processor crop_size {proc.crop_size if proc.do_center_crop else 'off'} does not give the "
                f"{size} x {size} input of the vision tower"
            )
        return cls(proc, config.resolution_ratio, "pad" if image_aspect_ratio is None else image_aspect_ratio)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) video frames are resized to before processing (the official 336 x 336,
        which is CLIP's crop size; here the processor's)."""
        return self.processor.crop_size

    def __call__(self, images: ImageSource | Sequence[ImageSource]) -> torch.Tensor:
        """Images -> (B, parts, 3, H, W) float32 (:func:`preprocess_images`)."""
        return preprocess_images(
            images, self.processor, resolution_ratio=self.resolution_ratio, image_aspect_ratio=self.image_aspect_ratio
        )


def _aspect_from_checkpoint(folder: Path) -> str | None:
    path = folder / "config.json"
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("image_aspect_ratio", "square")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable JSON object ({e})") from None
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{path}: image_aspect_ratio: expected a string, got {value!r}")
    return value
