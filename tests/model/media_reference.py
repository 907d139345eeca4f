"""A direct implementation of the official LLaVA-Mini input formulas, written apart from
``llava_mini.preprocess`` / ``llava_mini.video`` (numpy on (H, W, 3) uint8 arrays; Pillow only
for decoding and for the bicubic resize the official processor delegates to it), and the
synthetic media files the input tests encode."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def rgb_of(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 the way ``convert("RGB")`` defines it, spelled out per mode: alpha
    dropped, grey replicated, palette indices looked up."""
    a = np.asarray(img)
    if img.mode == "RGB":
        return a.copy()
    if img.mode == "RGBA":
        return a[..., :3].copy()
    if img.mode == "L":
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "LA":
        return np.repeat(a[..., :1], 3, axis=2)
    if img.mode == "P":
        pal = np.asarray(img.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
        return pal[a]
    raise AssertionError(f"mode {img.mode} not covered by the reference")


def pad_square(a: np.ndarray, mean=CLIP_MEAN) -> np.ndarray:
    h, w = a.shape[:2]
    side = max(h, w)
    fill = np.floor(np.asarray(mean) * 255).astype(np.uint8)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = a
    return out


def hd_parts(a: np.ndarray, r: int) -> list[np.ndarray]:
    if r == 1:
        return [a]
    h, w = a.shape[:2]
    bh, bw = h // r, w // r
    return [a[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw] for i in range(r) for j in range(r)] + [a]


def clip_process(
    a: np.ndarray, short: int = 336, crop: int = 336, mean=CLIP_MEAN, std=CLIP_STD, resample: int = 3
) -> np.ndarray:
    """CLIP processor on an (H, W, 3) uint8 array -> (3, crop, crop) float32."""
    h, w = a.shape[:2]
    if h <= w:
        nh, nw = short, short * w // h
    else:
        nh, nw = short * h // w, short
    if (nh, nw) != (h, w):
        a = np.asarray(Image.fromarray(a).resize((nw, nh), resample=resample))
    top, left = (nh - crop) // 2, (nw - crop) // 2
    assert top >= 0 and left >= 0, "the reference covers crops inside the resized image only"
    a = a[top : top + crop, left : left + crop]
    x = (a.astype(np.float64) / 255).astype(np.float32)
    x = (x - np.float32(mean)) / np.float32(std)
    return x.transpose(2, 0, 1)


def image_input(img: Image.Image, r: int = 1, pad: bool = True, **clip) -> np.ndarray:
    """One image -> (parts, 3, crop, crop)."""
    parts = hd_parts(rgb_of(img), r)
    if pad:
        parts = [pad_square(p, clip.get("mean", CLIP_MEAN)) for p in parts]
    return np.stack([clip_process(p, **clip) for p in parts])


def nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """torch's default ``interpolate`` (nearest): source index floor(dst * float32(in / out))."""
    ih, iw = a.shape[:2]
    if (ih, iw) == (h, w):
        return a
    rows = np.minimum(np.floor(np.arange(h, dtype=np.float32) * (np.float32(ih) / np.float32(h))), ih - 1)
    cols = np.minimum(np.floor(np.arange(w, dtype=np.float32) * (np.float32(iw) / np.float32(w))), iw - 1)
    return a[rows.astype(int)][:, cols.astype(int)]


def frame_indices(total: int, fps: float) -> list[int]:
    """The official ``get_seq_frames(total, min(total, int(total // fps)))`` with Python floats
    and the built-in (half-to-even) round; at least one frame."""
    k = max(1, min(total, int(total // fps)))
    step = (total - 1) / k
    starts = [round(step * i) for i in range(k + 1)]
    return [(starts[i] + starts[i + 1]) // 2 for i in range(k)]


def color(i: int) -> tuple[int, int, int]:
    """A distinct solid colour per frame index (no two frames within 300 of each other equal)."""
    return (30 + (i * 7) % 190, 30 + (i * 13) % 190, 30 + (i * 29) % 190)


def encode_video(
    path: Path,
    frames: int | list[np.ndarray],
    rate: fractions.Fraction | int,
    *,
    size: tuple[int, int] = (10, 18),
    codec: str = "libx264",
) -> Path:
    """An MP4 of ``frames`` arrays, or of that many solid :func:`color` frames (h, w = size)."""
    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"qp": "0", "preset": "ultrafast"}
        else:
            s.options = {"qscale": "1"}
        arrays = frames if isinstance(frames, list) else (np.full((h, w, 3), color(i), np.uint8) for i in range(frames))
        for a in arrays:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
