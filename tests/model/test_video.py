"""Video: per-frame pre-fusion, frame tokens concatenated, float32 mean of the fused text."""

from __future__ import annotations

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


def test_video_mean_is_taken_in_float32(gen: torch.Generator) -> None:
    m = build("tiny").to(torch.bfloat16)
    b, t = 1, 16
    video = torch.randn(b, t, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, b, 5, m.config.text.vocab_size)
    with torch.no_grad():
        _, text = m.encode_multimodal(ids, video)
        frames = [m.encode_images_mini(video[:, i], ids)[1] for i in range(t)]
    assert text.dtype == torch.bfloat16
    acc = torch.zeros_like(frames[0], dtype=torch.float32)
    for f in frames:
        acc = acc + f.float()
    assert torch.equal(text, (acc / t).to(torch.bfloat16))
    low = frames[0]
    for f in frames[1:]:
        low = low + f  # a bfloat16 running sum loses bits
    assert not torch.equal(text, low / t)


def test_video_llm_tokens_and_generate(gen: torch.Generator) -> None:
    m = build("tiny")
    video = torch.randn(1, 16, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, 1, 6, m.config.text.vocab_size, image_at=3)
    mm = m.prepare_inputs(ids, video)
    assert mm.inputs_embeds.shape[1] == 6 - 1 + 16  # one token per frame for C = 1
    base = build("tiny-baseline")
    assert base.prepare_inputs(ids, video).inputs_embeds.shape[1] == 6 - 1 + 16 * 16
    assert m.generate(ids, video, max_new_tokens=4).shape == (1, 4)
