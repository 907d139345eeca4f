"""Video: per-frame pre-fusion, frame tokens concatenated, float32 mean of the fused text."""

from __future__ import annotations

import pytest
import torch
from conftest import build, make_ids


def test_video_is_per_frame_then_mean(gen: torch.Generator) -> None:
    m = build("tiny-c2")
    cfg = m.config
    b, t, n_text = 2, 5, 6
    video = torch.randn(b, t, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, b, n_text, cfg.text.vocab_size, pad_tail=1)
    with torch.no_grad():
        vis, text = m.encode_multimodal(ids, video)
        frames = [m.encode_images_mini(video[:, i], ids) for i in range(t)]
    assert vis.shape == (b, t * cfg.num_queries, cfg.text.hidden_size)
    assert text.shape == (b, n_text, cfg.text.hidden_size)
    assert torch.equal(vis, torch.cat([f[0] for f in frames], dim=1))  # frame order
    mean = sum(f[1].double() for f in frames) / t
    assert (text.double() - mean).abs().max() < 1e-6
    assert (text - frames[0][1]).abs().max() > 1e-4  # frames do differ


@pytest.mark.parametrize("backend", ["reference", "cpu"])  # the official loop, the fused batched path
def test_video_mean_is_taken_in_float32(backend: str, gen: torch.Generator) -> None:
    m = build("tiny", backend=backend).to(torch.bfloat16)
    b, t = 1, 48
    video = torch.randn(b, t, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, b, 5, m.config.text.vocab_size)
    with torch.no_grad():
        _, text = m.encode_multimodal(ids, video)
        frames = [m.encode_images_mini(video[:, i], ids)[1] for i in range(t)]
    assert text.dtype == torch.bfloat16
    acc = torch.zeros_like(frames[0], dtype=torch.float32)  # the official order: a float32 running sum
    for f in frames:
        acc = acc + f.float()
    exact = sum(f.double() for f in frames) / t

    def row_error(y: torch.Tensor) -> torch.Tensor:  # relative error of each text row
        return (y.double() - exact).norm(dim=-1) / exact.norm(dim=-1)

    low = frames[0]
    for f in frames[1:]:
        low = low + f  # a bfloat16 running sum loses bits
    if backend == "reference":  # the official loop: the same frames, so the float32 mean exactly
        assert torch.equal(text, (acc / t).to(torch.bfloat16))
    else:  # batched frames round differently from one frame at a time (1.6e-3 seen), far below the bug
        assert row_error(text).max() < 4e-3
    assert row_error(low / t).max() > 4e-3


def test_video_llm_tokens_and_generate(gen: torch.Generator) -> None:
    m = build("tiny")
    video = torch.randn(1, 16, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, 1, 6, m.config.text.vocab_size, image_at=3)
    mm = m.prepare_inputs(ids, video)
    assert mm.inputs_embeds.shape[1] == 6 - 1 + 16  # one token per frame for C = 1
    base = build("tiny-baseline")
    assert base.prepare_inputs(ids, video).inputs_embeds.shape[1] == 6 - 1 + 16 * 16
    assert m.generate(ids, video, max_new_tokens=4).shape == (1, 4)


def test_video_sum_of_consecutive_runs_adds_up(gen: torch.Generator) -> None:
    """encode_video_sum over runs of frames (one empty, streamed as chunks) gives the whole
    video's tokens and float32 sum, on the fused and the official path."""
    for backend, prefusion in (("auto", "fused"), ("reference", "official")):
        m = build("tiny-c2", backend=backend)
        b, t = 2, 5
        video = torch.randn(b, t, 1, 3, 28, 28, generator=gen)
        ids = make_ids(gen, b, 6, m.config.text.vocab_size, pad_tail=1)
        with torch.no_grad():
            whole, text = m.encode_multimodal(ids, video, prefusion=prefusion)
            runs = [m.encode_video_sum(ids, video[:, a:z], prefusion=prefusion) for a, z in ((0, 3), (3, 3), (3, 5))]
            streamed = m.encode_video_sum(ids, iter([video[:, :2], video[:, 2:]]), prefusion=prefusion)
        assert [r[2] for r in runs] == [3, 0, 2] and streamed[2] == t
        assert runs[1][0].shape == (b, 0, m.config.text.hidden_size) and not runs[1][1].any()
        tokens = torch.cat([r[0] for r in runs], dim=1)
        assert (tokens - whole).abs().max() < 1e-6 and (streamed[0] - whole).abs().max() < 1e-6
        for total in (sum(r[1] for r in runs), streamed[1]):
            assert total.dtype == torch.float32
            assert (m.video_text_mean(total, t) - text).abs().max() < 1e-6
        assert (m.video_text_mean(runs[0][1], 3) - text).abs().max() > 1e-4  # the runs do differ
        with pytest.raises(ValueError, match="at least one frame"):
            m.video_text_mean(runs[1][1], 0)
        with pytest.raises(ValueError, match="chunk 0"):
            m.encode_video_sum(ids, [video[:, 0]], prefusion=prefusion)
