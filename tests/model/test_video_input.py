"""Video inputs (llava_mini.video): the official frame sampling exactly, decoded frames against
the encoded content, HD frames against the reference formulas, bounded streaming memory, bad files."""

from __future__ import annotations

import fractions
import gc
import tracemalloc

import av
import media_reference as ref
import numpy as np
import pytest
import torch
from conftest import build, make_ids

from llava_mini import LlavaMiniConfig
from llava_mini.preprocess import ImagePreprocessor, ImageProcessorConfig, MediaError
from llava_mini.video import load_video, probe_video, resize_frame, sampled_frame_indices, stream_video

NTSC = fractions.Fraction(24000, 1001)


@pytest.mark.parametrize(
    "total,fps,expected",
    [
        (75, 7.5, [3, 11, 18, 26, 33, 40, 48, 55, 63, 70]),  # 10 s: seg 7.4
        (111, 30.0, [18, 55, 91]),  # 3.7 s: seg 110/3
        (89, float(NTSC), [14, 44, 73]),  # 3.71 s at 23.976: seg 88/3
        (6, 2.5, [1, 3]),  # seg 2.5: round(2.5) = 2 (half to even; half up would give [1, 4])
        (3, 1.0, [0, 1, 1]),  # fps 1: k = T, an index repeats
        (12, 30.0, [5]),  # 0.4 s: under one second -> one frame, (T - 1) // 2
        (1, 30.0, [0]),  # a single frame
        (30, 30.0, [14]),  # exactly one second
    ],
)
def test_sampled_frame_indices_exact(total, fps, expected):
    assert sampled_frame_indices(total, fps) == expected


def test_sampled_frame_indices_cap_and_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        total = int(rng.integers(1, 5000))
        fps = float(rng.choice([1.0, 2.0, 7.5, 12.5, float(NTSC), 25.0, 29.97, 30.0, 59.94, 60.0]))
        idx = sampled_frame_indices(total, fps)
        assert idx == ref.frame_indices(total, fps)
        assert len(idx) == max(1, min(total, int(total // fps)))
        assert all(0 <= i < total for i in idx) and idx == sorted(idx)
    capped = sampled_frame_indices(7500, 7.5, max_frames=180)
    assert len(capped) == 180 and capped[0] == (round(7499 / 180) + 0) // 2 and capped[-1] < 7500
    for bad in [dict(num_frames=0, fps=30.0), dict(num_frames=10, fps=0.0), dict(num_frames=10, fps=float("inf"))]:
        with pytest.raises(ValueError, match=next(iter(k for k, v in bad.items() if v in (0, 0.0, float("inf"))))):
            sampled_frame_indices(**bad)
    with pytest.raises(ValueError, match="max_frames"):
        sampled_frame_indices(10, 1.0, max_frames=0)


def tiny_pre(ratio: int = 1) -> ImagePreprocessor:
    return ImagePreprocessor(ImageProcessorConfig.for_image_size(28), resolution_ratio=ratio)


def frame_colors(chunks) -> np.ndarray:
    """Mean RGB (0..255) of every yielded frame, the normalisation undone."""
    x = torch.cat(list(chunks))[:, 0].double()  # (T, 3, H, W), the single part
    mean, std = torch.tensor(ref.CLIP_MEAN, dtype=torch.double), torch.tensor(ref.CLIP_STD, dtype=torch.double)
    rgb = (x * std[:, None, None] + mean[:, None, None]) * 255
    return rgb.mean(dim=(2, 3)).numpy()


@pytest.mark.parametrize("rate", [fractions.Fraction(15, 2), NTSC, 30], ids=["7.5", "23.976", "30"])
@pytest.mark.parametrize("seconds", [0.0, 0.4, 3.7], ids=["1frame", "0.4s", "3.7s"])
def test_decoded_frames_are_the_sampled_ones(tmp_path, rate, seconds):
    total = max(1, round(seconds * float(rate)))
    path = ref.encode_video(tmp_path / "v.mp4", total, rate)
    info = probe_video(path)
    assert info.num_frames == total and abs(info.fps - float(rate)) < 1e-9
    assert (info.width, info.height) == (18, 10)
    want = ref.frame_indices(total, float(rate))
    chunks = list(stream_video(path, tiny_pre(), chunk_frames=2))
    assert [c.shape[0] for c in chunks[:-1]] == [2] * (len(chunks) - 1) and 1 <= chunks[-1].shape[0] <= 2
    got = frame_colors(chunks)
    assert len(got) == len(want)
    palette = np.array([ref.color(i) for i in range(total)], dtype=np.float64)
    for g, i in zip(got, want, strict=True):
        assert np.abs(g - palette[i]).max() < 4.5, (g, palette[i])  # RGB -> yuv420p -> RGB rounding
        assert int(np.abs(palette - g).max(axis=1).argmin()) == i  # no neighbour frame is closer


@pytest.mark.parametrize("ratio", [1, 2])
def test_frames_match_the_official_resize_and_processor(tmp_path, ratio):
    rng = np.random.default_rng(ratio)
    arrays = [rng.integers(0, 256, (22, 34, 3), dtype=np.uint8) for _ in range(23)]  # 3.07 s at 7.5 fps
    path = ref.encode_video(tmp_path / "v.mp4", arrays, fractions.Fraction(15, 2), size=(22, 34))
    decoded = ref.decode_all(path)
    out = torch.cat(list(stream_video(path, tiny_pre(ratio), chunk_frames=3)))
    want = ref.frame_indices(23, 7.5)
    assert out.shape == (len(want), 1 if ratio == 1 else 5, 3, 28, 28)
    for o, i in zip(out, want, strict=True):
        frame = ref.nearest(decoded[i], 28, 28)
        parts = np.stack([ref.clip_process(p, short=28, crop=28) for p in ref.hd_parts(frame, ratio)])  # no pad
        assert float(np.abs(o.numpy() - parts).max()) <= 1e-6


def test_resize_frame_is_torch_nearest():
    rng = np.random.default_rng(4)
    for h, w in [(5, 7), (336, 336), (97, 13), (1, 1)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(resize_frame(a, (28, 31)), ref.nearest(a, 28, 31))
    a = rng.integers(0, 256, (28, 31, 3), dtype=np.uint8)
    assert resize_frame(a, (28, 31)) is a
    with pytest.raises(ValueError, match="frame"):
        resize_frame(a.astype(np.float32), (28, 28))


def peak_stream_bytes(path) -> tuple[int, int]:
    """(frames yielded, peak traced bytes) while consuming the stream chunk by chunk."""
    gc.collect()
    tracemalloc.start()
    try:
        pre = ImagePreprocessor(ImageProcessorConfig.for_image_size(8))
        n = sum(c.shape[0] for c in stream_video(path, pre, chunk_frames=4))
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_length(tmp_path):
    short = ref.encode_video(tmp_path / "short.mp4", 100, 1, size=(8, 8), codec="mpeg4")
    long = ref.encode_video(tmp_path / "long.mp4", 2000, 1, size=(8, 8), codec="mpeg4")
    peak_stream_bytes(short)  # warm-up: first-call allocations (lazy imports, caches) are not the stream's
    n_short, peak_short = peak_stream_bytes(short)
    n_long, peak_long = peak_stream_bytes(long)
    assert (n_short, n_long) == (len(ref.frame_indices(100, 1.0)), len(ref.frame_indices(2000, 1.0)))
    per_frame = 3 * 8 * 8 * 4
    held_all = (n_long - n_short) * per_frame  # what holding every frame would add (~0.7 MB)
    assert peak_long - peak_short < held_all / 4, (peak_short, peak_long, held_all)


def test_load_video_feeds_the_model(tmp_path, gen):
    path = ref.encode_video(tmp_path / "v.mp4", 23, fractions.Fraction(15, 2))
    model = build("tiny")
    video = load_video(path, ImagePreprocessor.for_model(model.config))
    assert video.shape == (1, 3, 1, 3, 28, 28)
    ids = make_ids(gen, 1, 9, model.config.text.vocab_size)
    with torch.no_grad():
        tokens, text = model.encode_multimodal(ids, video)
    assert tokens.shape == (1, 3 * model.config.num_queries, model.config.text.hidden_size)
    assert torch.isfinite(tokens).all() and torch.isfinite(text).all()


def test_hd_video_preprocessor_for_model():
    pre = ImagePreprocessor.for_model(LlavaMiniConfig.from_name("tiny-hd"))
    assert pre.frame_size == (28, 28) and pre.resolution_ratio == 2


def test_bad_video_files(tmp_path):
    with pytest.raises(MediaError, match="missing.mp4.*not found"):
        stream_video(tmp_path / "missing.mp4")  # raised at the call, not at the first chunk
    (tmp_path / "junk.mp4").write_bytes(b"\x00garbage" * 200)
    with pytest.raises(MediaError, match="junk.mp4"):
        probe_video(tmp_path / "junk.mp4")
    good = ref.encode_video(tmp_path / "good.mp4", 40, 30)
    data = good.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.mp4"):
        list(stream_video(tmp_path / "cut.mp4"))
    (tmp_path / "zzzz.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))  # an unknown codec tag
    with pytest.raises(MediaError, match="zzzz.mp4.*unsupported video codec"):
        stream_video(tmp_path / "zzzz.mp4")
    with av.open(str(tmp_path / "audio.wav"), "w") as c:  # no video stream
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(MediaError, match="audio.wav.*no video stream"):
        stream_video(tmp_path / "audio.wav")
    with pytest.raises(TypeError, match="video"):
        stream_video(42)
    with pytest.raises(ValueError, match="chunk_frames"):
        stream_video(good, chunk_frames=0)
