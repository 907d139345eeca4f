"""Shapes through every stage, for every path (image, HD, video, baseline)."""

from __future__ import annotations

import pytest
import torch
from conftest import build, make_ids


@pytest.mark.parametrize(
    "name, frames", [("tiny", 0), ("tiny-c2", 0), ("tiny-hd", 0), ("tiny", 3), ("tiny-hd", 2), ("tiny-baseline", 0)]
)
def test_stage_shapes(name: str, frames: int, gen: torch.Generator) -> None:
    m = build(name)
    cfg = m.config
    b, n_text, parts = 2, 6, cfg.image_parts
    hidden, dv, n = cfg.text.hidden_size, cfg.vision.hidden_size, cfg.vision.num_patches
    shape = (b, frames, parts, 3, 28, 28) if frames else (b, parts, 3, 28, 28)
    images = torch.randn(*shape, generator=gen)
    ids = make_ids(gen, b, n_text, cfg.text.vocab_size, pad_tail=1)
    one = images[:, 0] if frames else images
    with torch.no_grad():
        clip = m.encode_images(one.flatten(0, 1))
        assert clip.shape == (b * parts, n, dv)
        assert m.project(clip).shape == (b * parts, n, hidden)
        if cfg.is_mini:
            grid_tokens = cfg.compressor_grid**2
            comp, attn = m.compress(torch.randn(b, grid_tokens, dv, generator=gen), need_weights=True)
            assert comp.shape == (b, cfg.num_queries, dv) and attn.shape == (b, cfg.num_queries, grid_tokens)
            seq = cfg.prefusion_vision_tokens + cfg.num_queries + n_text
            x = m.prefusion(torch.randn(b, seq, hidden, generator=gen), torch.zeros(b, seq, dtype=torch.bool))
            assert x.shape == (b, seq, hidden)
        vis, text = m.encode_multimodal(ids, images)
        per_image = cfg.llm_tokens_per_image
        assert vis.shape == (b, max(frames, 1) * per_image, hidden)
        assert text.shape == (b, n_text, hidden)
        mm = m.prepare_inputs(ids, images)
        assert mm.inputs_embeds.shape == (b, n_text - 1 + max(frames, 1) * per_image, hidden)
        assert mm.attention_mask.shape == mm.position_ids.shape == mm.inputs_embeds.shape[:2]
        logits = m(ids, images)
        assert logits.shape == (*mm.inputs_embeds.shape[:2], cfg.text.vocab_size)
        out = m.generate(ids, images, max_new_tokens=3)
        assert out.shape == (b, 3) and out.dtype == torch.long
