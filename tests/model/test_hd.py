"""High resolution (resolution_ratio = 2): re-tiling and the HD pre-fusion input."""

from __future__ import annotations

import naive_llava as naive
import torch
from conftest import build, make_ids

from llava_mini import retile_hd


def test_retile_four_24x24_grids_into_one_48x48_grid() -> None:
    g, d = 24, 3
    feats = torch.zeros(1, 4, g * g, d)
    for s in range(4):
        for r in range(g):
            for c in range(g):
                feats[0, s, r * g + c] = torch.tensor([s, r, c], dtype=torch.float32)
    big = retile_hd(feats, 2)
    assert big.shape == (1, 2304, d)
    grid = big.reshape(48, 48, d)
    for rr in range(48):
        for cc in range(48):
            # sub-images in split order: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
            expect = [2 * (rr // g) + cc // g, rr % g, cc % g]
            assert grid[rr, cc].tolist() == expect, (rr, cc)


def test_retile_random_against_block_assembly(gen: torch.Generator) -> None:
    b, g, d, r = 2, 4, 5, 3
    feats = torch.randn(b, r * r, g * g, d, generator=gen)
    blocks = feats.reshape(b, r, r, g, g, d)
    rows = [torch.cat([blocks[:, i, j] for j in range(r)], dim=2) for i in range(r)]
    expect = torch.cat(rows, dim=1).reshape(b, -1, d)
    assert torch.equal(retile_hd(feats, r), expect)


def test_hd_pipeline_matches_official_order(gen: torch.Generator) -> None:
    m = build("tiny-hd")
    with torch.no_grad():
        for layer in m.model.prefusion_layers:
            layer.self_attn.q_proj.weight.mul_(6)
        m.model.compressor.attn.in_proj_weight.mul_(6)
    cfg = m.config
    assert cfg.image_parts == 5 and cfg.compressor_grid == 8 and cfg.prefusion_vision_tokens == 4 * 16 + 16
    b, n_text = 2, 7
    images = torch.randn(b, 5, 3, 28, 28, generator=gen)
    ids = make_ids(gen, b, n_text, cfg.text.vocab_size, image_at=0, pad_tail=2)
    captured = {}
    original = m.model.compressor.forward

    def spy(x, **kw):
        captured["compressor_in"] = x
        return original(x, **kw)

    m.model.compressor.forward = spy
    with torch.no_grad():
        vis, text = m.encode_images_mini(images, ids)
        clip = m.encode_images(images.flatten(0, 1)).unflatten(0, (b, 5))
    assert captured["compressor_in"].shape == (b, 64, 32)  # one 8 x 8 grid (48 x 48 at 7B size)
    assert torch.equal(captured["compressor_in"], retile_hd(clip[:, :4], 2))
    ref_vis, ref_text, full = naive.prefusion_official(m.state_dict(), cfg, images, ids, m.model.rotary_emb.inv_freq)
    assert full.shape[1] == 64 + 16 + 4 + n_text
    assert vis.shape == (b, 4, cfg.text.hidden_size)
    for got, ref in [(vis, ref_vis), (text, ref_text)]:
        err = (got.double() - ref).abs().max().item()
        assert err < 3e-5 * max(1.0, ref.abs().max().item()), err
    # the global-view rows (just before the compressed ones) are not what is kept
    assert (full[:, 80 - 4 : 80] - ref_vis).abs().max() > 1e-2


def test_hd_generate_runs(gen: torch.Generator) -> None:
    m = build("tiny-hd")
    ids = make_ids(gen, 1, 5, m.config.text.vocab_size)
    images = torch.randn(1, 5, 3, 28, 28, generator=gen)
    mm = m.prepare_inputs(ids, images)
    assert mm.inputs_embeds.shape == (1, 5 - 1 + 4, m.config.text.hidden_size)
    out = m.generate(ids, images, max_new_tokens=3)
    assert out.shape == (1, 3)
