"""Pre-fusion: official token order, kept rows, padding, positions (encode_images_mini)."""

from __future__ import annotations

import naive_llava as naive
import pytest
import torch
from conftest import build, make_ids


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 3e-5) -> None:
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"max abs error {err}"


def sharpen(m) -> None:
    """Scale attention weights up so that rows differ clearly (random 0.02-std weights give
    near-uniform attention, which would make wrongly chosen rows look alike)."""
    with torch.no_grad():
        for layer in m.model.prefusion_layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
        m.model.compressor.attn.in_proj_weight.mul_(6)


@pytest.mark.parametrize("name", ["tiny", "tiny-c2", "tiny-llama3"])
def test_encode_images_mini_matches_official_order(name: str, gen: torch.Generator) -> None:
    m = build(name)
    sharpen(m)
    cfg = m.config
    b, n_text = 3, 9
    images = torch.randn(b, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, b, n_text, cfg.text.vocab_size, image_at=1, pad_tail=3)
    ids[0, 5] = 0  # a pad in the middle too
    with torch.no_grad():
        vis, text = m.encode_images_mini(images, ids)
    inv = m.model.rotary_emb.inv_freq
    ref_vis, ref_text, full = naive.prefusion_official(m.state_dict(), cfg, images, ids, inv)
    q = cfg.num_queries
    assert vis.shape == (b, q, cfg.text.hidden_size) and text.shape == (b, n_text, cfg.text.hidden_size)
    close(vis, ref_vis)
    close(text, ref_text)
    # the test can tell the right rows from their neighbours: taking the compressed rows one
    # position earlier (last CLIP row) or the text rows shifted by one would fail
    n_vis = cfg.vision.num_patches
    assert full.shape[1] == n_vis + q + n_text
    assert (full[:, n_vis - 1 : n_vis - 1 + q] - ref_vis).abs().max() > 1e-2
    assert (full[:, -n_text - 1 : -1] - ref_text).abs().max() > 1e-2


def test_padded_text_rows_get_raw_embeddings_and_are_invisible(gen: torch.Generator) -> None:
    m = build("tiny-c2")
    sharpen(m)
    cfg = m.config
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, 2, 8, cfg.text.vocab_size, image_at=2, pad_tail=2)
    with torch.no_grad():
        vis, text = m.encode_images_mini(images, ids)
        emb = m.model.embed_tokens.weight
        pad = ids <= 0  # pads and the image placeholder
        assert pad.sum() == 4
        assert torch.equal(text[pad], emb[ids.clamp(min=0)][pad])  # raw embeddings back, bit-exact
        assert (text[~pad] - emb[ids.clamp(min=0)][~pad]).abs().max() > 1e-3  # others are fused
        # changing the embedding of token 0 (what pads and the placeholder look up) changes
        # only the padded rows: they are hidden as keys
        m.model.embed_tokens.weight[0].add_(5.0)
        vis2, text2 = m.encode_images_mini(images, ids)
    assert torch.equal(vis2, vis)
    assert torch.equal(text2[~pad], text[~pad])
    assert not torch.equal(text2[pad], text[pad])


def test_causality_vision_rows_do_not_see_text(gen: torch.Generator) -> None:
    m = build("tiny-c2")
    cfg = m.config
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, 2, 6, cfg.text.vocab_size)
    other = ids.clone()
    other[:, 3:] = torch.randint(1, cfg.text.vocab_size, (2, 3), generator=gen)
    with torch.no_grad():
        vis_a, text_a = m.encode_images_mini(images, ids)
        vis_b, text_b = m.encode_images_mini(images, other)
        _, text_c = m.encode_images_mini(torch.randn(2, 1, 3, 28, 28, generator=gen), ids)
    assert torch.equal(vis_a, vis_b)  # kept compressed rows precede the text
    assert torch.equal(text_a[:, :3], text_b[:, :3])  # earlier text rows do not see later ones
    assert (text_a - text_c).abs().max() > 1e-4  # text rows do see the image


def test_position_ids_skip_padding(gen: torch.Generator) -> None:
    """A pad inside the text does not advance the position: the row after a pad is the same
    as in a sequence where the pad's embedding is anything else and positions are counted
    over real tokens only (checked through the naive oracle with explicit cumsum positions)."""
    m = build("tiny")
    sharpen(m)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    ids = make_ids(gen, 1, 6, m.config.text.vocab_size, image_at=None)
    ids[0, 2] = 0
    with torch.no_grad():
        _, text = m.encode_images_mini(images, ids)
    _, ref, _ = naive.prefusion_official(m.state_dict(), m.config, images, ids, m.model.rotary_emb.inv_freq)
    close(text, ref)
    captured = {}
    original = m.model.rotary_emb.forward

    def spy(position_ids, dtype):
        captured["pos"] = position_ids.clone()
        return original(position_ids, dtype)

    m.model.rotary_emb.forward = spy
    with torch.no_grad():
        m.encode_images_mini(images, ids)
    n = m.config.vision.num_patches + m.config.num_queries
    assert captured["pos"][0, n:].tolist() == [n, n + 1, 1, n + 2, n + 3, n + 4]
    assert captured["pos"][0, :n].tolist() == list(range(n))
