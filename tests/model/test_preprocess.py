"""Image inputs (llava_mini.preprocess) against a direct implementation of the official formulas
(media_reference) on generated files of odd sizes, aspect ratios and modes."""

from __future__ import annotations

import json

import media_reference as ref
import numpy as np
import pytest
import torch
from conftest import build
from PIL import Image

from llava_mini import LlavaMiniConfig
from llava_mini.preprocess import (
    ImagePreprocessor,
    ImageProcessorConfig,
    MediaError,
    expand2square,
    load_image,
    preprocess_images,
    split_image,
)

TOL = 1e-6  # same float32 operations in the same order: equal up to rounding of the last bit


def random_image(rng: np.random.Generator, w: int, h: int, mode: str) -> Image.Image:
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 40, (h, w), dtype=np.uint8), "P")
        img.putpalette(rng.integers(0, 256, 40 * 3, dtype=np.uint8).tolist())
        return img
    raise AssertionError(mode)


def check_close(out: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(out.shape) == expected.shape, (tuple(out.shape), expected.shape)
    assert out.dtype == torch.float32
    err = float(np.abs(out.numpy() - expected).max())
    assert err <= TOL, err


# (width, height): wide, tall, square, extreme ratios, odd and tiny sides
SIZES = [(57, 101), (333, 211), (41, 41), (500, 37), (7, 90), (3, 5)]


@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("mode,fmt", [("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGB", "JPEG")])
def test_image_file_matches_official_formulas(tmp_path, w, h, mode, fmt):
    rng = np.random.default_rng(w * 1000 + h)
    path = tmp_path / f"img.{fmt.lower()}"
    random_image(rng, w, h, mode).save(path, fmt)
    decoded = Image.open(path)  # the reference reads the same file (JPEG: the decoded pixels)
    out = preprocess_images(path)
    assert out.shape == (1, 1, 3, 336, 336)
    check_close(out[0], ref.image_input(decoded))


def test_alpha_is_dropped_not_composited(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 50, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: compositing on white would give white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = preprocess_images(tmp_path / "a.png", ImageProcessorConfig.for_image_size(50))
    check_close(out[0], ref.image_input(Image.fromarray(rgba[..., :3]), short=50, crop=50))


@pytest.mark.parametrize("ratio", [2, 3])
@pytest.mark.parametrize("w,h", [(101, 57), (64, 97), (80, 80), (9, 13)])
def test_hd_split_order_and_padding_per_part(ratio, w, h):
    rng = np.random.default_rng(ratio * 7 + w)
    img = random_image(rng, w, h, "RGB")
    cfg = ImageProcessorConfig.for_image_size(28)
    out = preprocess_images([img, img.transpose(Image.Transpose.ROTATE_90)], cfg, resolution_ratio=ratio)
    assert out.shape == (2, ratio * ratio + 1, 3, 28, 28)
    check_close(out[0], ref.image_input(img, r=ratio, short=28, crop=28))
    check_close(out[1], ref.image_input(img.transpose(Image.Transpose.ROTATE_90), r=ratio, short=28, crop=28))


def test_split_image_crops():
    img = Image.fromarray(np.arange(7 * 11 * 3, dtype=np.uint8).reshape(7, 11, 3))
    parts = split_image(img, 2)
    a = np.asarray(img)
    assert [p.size for p in parts] == [(5, 3)] * 4 + [(11, 7)]
    for got, want in zip(parts, ref.hd_parts(a, 2), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert split_image(img, 1) == [img]
    with pytest.raises(ValueError, match="too small"):
        split_image(img, 8)


def test_expand2square_uses_the_mean_colour():
    img = Image.fromarray(np.zeros((3, 8, 3), np.uint8))
    sq = np.asarray(expand2square(img, ImageProcessorConfig().pad_color))
    np.testing.assert_array_equal(sq, ref.pad_square(np.zeros((3, 8, 3), np.uint8)))
    assert tuple(sq[0, 0]) == (122, 116, 104)


def test_no_padding_when_the_checkpoint_says_square(tmp_path):
    rng = np.random.default_rng(3)
    img = random_image(rng, 90, 40, "RGB")
    cfg = ImageProcessorConfig.for_image_size(28)
    square = preprocess_images(img, cfg, image_aspect_ratio="square")
    check_close(square[0], ref.image_input(img, pad=False, short=28, crop=28))
    padded = preprocess_images(img, cfg)
    assert (square - padded).abs().max() > 0.1
    with pytest.raises(ValueError, match="anyres"):
        preprocess_images(img, cfg, image_aspect_ratio="anyres")


def write_ckpt(folder, proc: dict | str | None, model: dict | None = None):
    folder.mkdir(exist_ok=True)
    if proc is not None:
        (folder / "preprocessor_config.json").write_text(proc if isinstance(proc, str) else json.dumps(proc))
    if model is not None:
        (folder / "config.json").write_text(json.dumps(model))
    return folder


def test_processor_config_absent_gives_clip_defaults(tmp_path):
    cfg = ImageProcessorConfig.from_pretrained(write_ckpt(tmp_path / "ck", None))
    assert cfg == ImageProcessorConfig()
    assert (cfg.shortest_edge, cfg.crop_size, cfg.resample_name) == (336, (336, 336), "bicubic")
    assert cfg.image_mean == ref.CLIP_MEAN and cfg.image_std == ref.CLIP_STD


@pytest.mark.parametrize(
    "proc",
    [
        {"size": 30, "crop_size": 28},  # the openai/clip-vit-large-patch14-336 file's (old) form
        {"size": {"shortest_edge": 30}, "crop_size": {"height": 28, "width": 28}, "image_processor_type": "CLIP"},
    ],
)
def test_processor_config_present_is_used(tmp_path, proc):
    mean, std = [0.5, 0.25, 0.75], [0.2, 0.3, 0.4]
    proc = dict(proc, image_mean=mean, image_std=std, resample=2)
    cfg = ImageProcessorConfig.from_pretrained(write_ckpt(tmp_path / "ck", proc))
    assert cfg.shortest_edge == 30 and cfg.crop_size == (28, 28) and cfg.pad_color == (127, 63, 191)
    img = random_image(np.random.default_rng(5), 45, 61, "RGB")
    out = preprocess_images(img, cfg)
    check_close(out[0], ref.image_input(img, short=30, crop=28, mean=mean, std=std, resample=2))


def test_processor_config_height_width_size(tmp_path):
    cfg = ImageProcessorConfig.from_dict({"size": {"height": 20, "width": 30}, "crop_size": 18})
    img = random_image(np.random.default_rng(6), 40, 40, "RGB")
    out = preprocess_images(img, cfg)
    a = np.asarray(img.resize((30, 20), resample=3))[1:19, 6:24]
    x = ((a.astype(np.float64) / 255).astype(np.float32) - np.float32(ref.CLIP_MEAN)) / np.float32(ref.CLIP_STD)
    check_close(out[0, 0], x.transpose(2, 0, 1))


def test_processor_config_corrupt_json(tmp_path):
    folder = write_ckpt(tmp_path / "ck", '{"size": 336,')
    with pytest.raises(ValueError, match="preprocessor_config.json: not a readable JSON"):
        ImageProcessorConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match="not a directory"):
        ImageProcessorConfig.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize(
    "field,value",
    [
        ("size", -3),
        ("size", "336"),
        ("size", {"longest_edge": 336}),
        ("crop_size", {"height": 0, "width": 336}),
        ("crop_size", 33.5),
        ("image_mean", [0.5, 0.5]),
        ("image_mean", 0.5),
        ("image_std", [0.1, 0.0, 0.1]),
        ("image_std", [0.1, float("nan"), 0.1]),
        ("resample", 7),
        ("resample", "bicubic"),
        ("do_resize", "yes"),
        ("do_center_crop", 1),
        ("rescale_factor", 0),
    ],
)
def test_processor_config_bad_field(tmp_path, field, value):
    folder = write_ckpt(tmp_path / "ck", {field: value})
    with pytest.raises(ValueError, match=field) as info:
        ImageProcessorConfig.from_pretrained(folder)
    assert "preprocessor_config.json" in str(info.value)


def test_for_model_reads_checkpoint_and_checks_the_size(tmp_path):
    config = LlavaMiniConfig.from_name("tiny-hd")
    good = write_ckpt(tmp_path / "good", {"size": 28, "crop_size": 28}, {"image_aspect_ratio": "pad"})
    pre = ImagePreprocessor.for_model(config, good)
    assert (pre.resolution_ratio, pre.image_aspect_ratio, pre.processor.crop_size) == (2, "pad", (28, 28))
    no_field = write_ckpt(tmp_path / "nofield", {"size": 28, "crop_size": 28}, {"hidden_size": 8})
    assert ImagePreprocessor.for_model(config, no_field).image_aspect_ratio == "square"  # official getattr(..., None)
    assert ImagePreprocessor.for_model(config).image_aspect_ratio == "pad"
    with pytest.raises(ValueError, match="crop_size"):
        ImagePreprocessor.for_model(config, write_ckpt(tmp_path / "big", None))  # CLIP's 336 vs the tiny 28


def test_preprocessed_images_run_through_the_tiny_hd_model(tmp_path, gen):
    rng = np.random.default_rng(9)
    paths = []
    for i, (w, h) in enumerate([(45, 31), (20, 66)]):
        paths.append(tmp_path / f"{i}.png")
        random_image(rng, w, h, "RGB").save(paths[-1])
    model = build("tiny-hd")
    pixels = ImagePreprocessor.for_model(model.config)(paths)
    assert pixels.shape == (2, model.config.image_parts, 3, 28, 28)
    with torch.no_grad():
        vision, compressed = model.vision_prefix(pixels)
    assert vision.shape[:2] == (2, model.config.prefusion_vision_tokens)
    assert compressed.shape[:2] == (2, model.config.num_queries)
    assert torch.isfinite(vision).all() and torch.isfinite(compressed).all()


def test_pil_input_and_batches(tmp_path):
    rng = np.random.default_rng(11)
    imgs = [random_image(rng, 33, 17, "L"), random_image(rng, 12, 40, "RGBA")]
    cfg = ImageProcessorConfig.for_image_size(14)
    out = preprocess_images(imgs, cfg)
    assert out.shape == (2, 1, 3, 14, 14)
    for o, img in zip(out, imgs, strict=True):
        check_close(o, ref.image_input(img, short=14, crop=14))
    assert load_image(imgs[0]).mode == "RGB"


def test_bad_image_inputs(tmp_path):
    with pytest.raises(MediaError, match="nope.png.*not found"):
        preprocess_images(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image" * 10)
    with pytest.raises(MediaError, match="junk.png"):
        preprocess_images(tmp_path / "junk.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 9).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.png"):
        preprocess_images(tmp_path / "cut.png")
    with pytest.raises(TypeError, match="image"):
        preprocess_images([3])
    with pytest.raises(ValueError, match="at least one"):
        preprocess_images([])
    with pytest.raises(ValueError, match="resolution_ratio"):
        preprocess_images(tmp_path / "t.png", resolution_ratio=0)
    no_crop = ImageProcessorConfig(do_center_crop=False, shortest_edge=20)
    with pytest.raises(ValueError, match="differ in shape"):  # two aspect ratios, nothing makes them square
        preprocess_images([tmp_path / "t.png", Image.new("RGB", (10, 30))], no_crop, image_aspect_ratio="square")
