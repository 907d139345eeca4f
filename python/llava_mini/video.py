"""Video inputs of the reference model: decoded with PyAV, sampled and prepared as the official
LLaVA-Mini code does, streamed in chunks so memory stays bounded whatever the video's length.

The official ``load_video`` (``llavamini/eval/run_llava_mini.py``, the same in
``llavamini/serve/model_worker.py`` and the ``llavamini/eval/video/*`` scripts, commit 47da113)
reads the frame count and average frame rate from the decoder (decord), samples
:func:`sampled_frame_indices`, resizes every sampled frame to 336 x 336 with
``torch.nn.functional.interpolate`` (its default, nearest; aspect ratio ignored; skipped when the
frame already has that size) and casts back to uint8; the frames then go through
``split_image`` (HD) and straight into the CLIP image processor, *without* padding to a square.

The official code holds every sampled frame in memory at once; :func:`stream_video` decodes
lazily and yields chunks of ``chunk_frames`` preprocessed frames, ``(t, parts, 3, H, W)``
float32, holding at most one chunk (plus the frame being decoded).

Needs PyAV and Pillow (``pip install lmini-kernels[video]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lmini_kernels.checks import check_int, check_positive_float

try:
    import av
except ImportError as e:  # pragma: no cover - PyAV is pinned in .ci/requirements.txt
    raise ImportError("llava_mini.video needs PyAV: pip install 'lmini-kernels[video]'") from e
from PIL import Image

from .preprocess import ImagePreprocessor, ImageProcessorConfig, MediaError, clip_preprocess, split_image

__all__ = ["VideoInfo", "sampled_frame_indices", "probe_video", "resize_frame", "stream_video", "load_video"]


def sampled_frame_indices(num_frames: int, fps: float, *, max_frames: int | None = None) -> list[int]:
    """The frames the official ``load_video`` + ``get_seq_frames`` take, one per second.

    With T = ``num_frames``: k = ``int(T // fps)`` (then ``min(k, max_frames)`` when given, as
    the demo's cap of 180, and ``min(k, T)``); ``seg = (T - 1) / k`` in float64; frame i is
    ``(round(seg * i) + round(seg * (i + 1))) // 2`` with numpy's round (half to even): the middle
    of the i-th of k equal segments of [0, T - 1], which is close to, but not exactly, the middle
    frame of the i-th second. Indices never decrease and may repeat (fps below 1).

    A video shorter than one second (k = 0) makes the official code divide by zero; here it
    takes k = 1, i.e. the single frame ``(T - 1) // 2``.
    """
    check_int("num_frames", num_frames)
    check_positive_float("fps", fps)
    if max_frames is not None:
        check_int("max_frames", max_frames)
    total = int(num_frames)
    k = int(total // float(fps))
    if max_frames is not None:
        k = min(k, int(max_frames))
    k = max(1, min(total, k))
    seg = float(total - 1) / k
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(k)]


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder says about a video file's first video stream."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str


def _check_path(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"video: expected a file path, got {type(path).__name__}")
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise MediaError(f"video file {p!r}: not found")
    return p


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r")
    except av.FFmpegError as e:
        raise MediaError(f"video file {path!r}: not a readable video container ({e})") from None


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(f"video file {path!r}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise MediaError(f"video file {path!r}: unsupported video codec (PyAV's FFmpeg has no decoder for it)")
    return stream


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, average frame rate, size and codec of ``path``'s first video stream. The
    count is the container's (as decord's ``len``); when the container has none, the stream's
    packets are counted (no decoding). Missing, corrupt, stream-less or undecodable files are a
    :class:`MediaError` naming the file."""
    p = _check_path(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        rate = stream.average_rate or stream.guessed_rate
        if not rate or rate <= 0:
            raise MediaError(f"video file {p!r}: the video stream has no frame rate")
        frames = stream.frames
        if frames <= 0:
            try:
                frames = sum(1 for pkt in container.demux(stream) if pkt.size)
            except av.FFmpegError as e:
                raise MediaError(f"video file {p!r}: cannot read its packets ({e})") from None
        if frames <= 0:
            raise MediaError(f"video file {p!r}: the video stream has no frames")
        cc = stream.codec_context
        return VideoInfo(p, int(frames), float(rate), int(cc.width), int(cc.height), cc.name)


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official frame resize: (H, W, 3) uint8 -> (h, w, 3) uint8 with
    ``torch.nn.functional.interpolate`` in its default nearest mode (aspect ratio ignored); a
    frame already of that size is returned unchanged."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame: expected an (H, W, 3) uint8 array, got {getattr(frame, 'shape', type(frame))}")
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(h, w))
    return y[0].permute(1, 2, 0).to(torch.uint8).numpy()


def _frame_parts(rgb: np.ndarray, pre: ImagePreprocessor) -> np.ndarray:
    """One decoded RGB frame -> (parts, 3, H, W) float32 (resize, split, CLIP processor; no pad)."""
    img = Image.fromarray(resize_frame(rgb, pre.frame_size))
    return np.stack([clip_preprocess(part, pre.processor).numpy() for part in split_image(img, pre.resolution_ratio)])


def stream_video(
    path: str | os.PathLike,
    preprocessor: ImagePreprocessor | None = None,
    *,
    chunk_frames: int = 8,
    max_frames: int | None = None,
) -> Iterator[torch.Tensor]:
    """Decode ``path`` lazily and yield its sampled frames (:func:`sampled_frame_indices`),
    preprocessed, in chunks of ``(t, parts, 3, H, W)`` float32 with t = ``chunk_frames`` (the
    last chunk may be shorter). Only the current chunk and the frame being decoded are held, so
    memory does not grow with the video's length. ``preprocessor``: CLIP ViT-L/14-336 at
    336 x 336, no HD split, when None. Errors (missing, corrupt, no video stream, unsupported
    codec, fewer decodable frames than the container reports) are a :class:`MediaError` naming
    the file; file errors are raised at the call, before the first chunk is asked for."""
    pre = ImagePreprocessor(ImageProcessorConfig()) if preprocessor is None else preprocessor
    if not isinstance(pre, ImagePreprocessor):
        raise TypeError(f"preprocessor: expected an ImagePreprocessor, got {type(pre).__name__}")
    check_int("chunk_frames", chunk_frames)
    info = probe_video(path)
    indices = sampled_frame_indices(info.num_frames, info.fps, max_frames=max_frames)
    return _chunks(info, indices, pre, chunk_frames)


def _chunks(info: VideoInfo, indices: list[int], pre: ImagePreprocessor, chunk_frames: int) -> Iterator[torch.Tensor]:
    p = info.path
    pos, decoded, chunk = 0, 0, []
    with _open(p) as container:
        stream = _video_stream(container, p)
        frames = container.decode(stream)
        while pos < len(indices):
            try:
                frame = next(frames, None)
            except av.FFmpegError as e:
                raise MediaError(f"video file {p!r}: cannot decode frame {decoded} ({e})") from None
            if frame is None:
                raise MediaError(
                    f"video file {p!r}: decoded {decoded} frames, but the container reports {info.num_frames} "
                    f"and frame {indices[pos]} was wanted"
                )
            n, decoded = decoded, decoded + 1
            if n != indices[pos]:
                continue
            parts = _frame_parts(frame.to_ndarray(format="rgb24"), pre)
            while pos < len(indices) and indices[pos] == n:  # an index repeats when fps < 1
                chunk.append(parts)
                pos += 1
                if len(chunk) == chunk_frames:
                    yield torch.from_numpy(np.stack(chunk))
                    chunk = []
    if chunk:
        yield torch.from_numpy(np.stack(chunk))


def load_video(
    path: str | os.PathLike, preprocessor: ImagePreprocessor | None = None, *, max_frames: int | None = None
) -> torch.Tensor:
    """All sampled frames at once, ``(1, T, parts, 3, H, W)`` float32: the 6-D video input
    :class:`llava_mini.LlavaMini` takes. Memory grows with T; prefer :func:`stream_video`."""
    return torch.cat(list(stream_video(path, preprocessor, max_frames=max_frames, chunk_frames=64)))[None]
