"""Each building block against an independent float64 computation."""

from __future__ import annotations

import math

import naive_llava as naive
import pytest
import torch
from conftest import build

from llava_mini.config import RopeScaling
from llava_mini.llama import KVCache, cached_attention, llama3_inv_freq

CLIP = naive.CLIP_PREFIX


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> None:
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"max abs error {err}"


def test_clip_second_to_last_layer_patch_tokens(gen: torch.Generator) -> None:
    m = build("tiny")
    cfg = m.config
    sd = m.state_dict()
    pixels = torch.randn(2, 3, 28, 28, generator=gen)
    with torch.no_grad():
        out = m.encode_images(pixels)
    states = naive.clip_hidden_states(sd, cfg.vision, pixels, CLIP)
    assert out.shape == (2, 16, 32)
    close(out, states[-2][:, 1:])  # second-to-last layer, CLS dropped
    assert (states[-1][:, 1:] - states[-2][:, 1:]).abs().max() > 1e-3  # the last layer would differ
    assert (states[-2][:, :1] - states[-2][:, 1:2]).abs().max() > 1e-3  # CLS differs from patch 0
    # the last encoder layer and post_layernorm are not used
    with torch.no_grad():
        m.model.vision_tower.vision_tower.vision_model.encoder.layers[-1].mlp.fc2.weight.mul_(3)
        m.model.vision_tower.vision_tower.vision_model.post_layernorm.weight.mul_(3)
        assert torch.equal(m.encode_images(pixels), out)


def test_projector_is_mlp2x_gelu(gen: torch.Generator) -> None:
    m = build("tiny")
    x = torch.randn(3, 5, 32, generator=gen)
    with torch.no_grad():
        close(m.project(x), naive.projector(m.state_dict(), x))


@pytest.mark.parametrize("name, n", [("tiny", 16), ("tiny", 36), ("tiny-c2", 16), ("tiny-c2", 64), ("tiny-c2", 4)])
def test_resampler_matches_official_math(name: str, n: int, gen: torch.Generator) -> None:
    m = build(name)
    x = torch.randn(3, n, 32, generator=gen) * 2 + 0.5
    with torch.no_grad():
        m.model.compressor.attn.in_proj_weight.mul_(10)  # peaky attention: positions matter
        out, attn = m.model.compressor(x, need_weights=True, backend="reference")
        plain, none = m.compress(x)
    ref_out, ref_attn, table = naive.resampler(m.state_dict(), "model.compressor.", x, m.config.compressor_heads)
    c = m.config.compressor_size
    assert out.shape == (3, c * c, 32) and attn.shape == (3, c * c, n) and none is None
    close(out, ref_out, 1e-5)
    close(attn, ref_attn, 1e-5)
    close(plain, ref_out, 1e-5)
    close(m.model.compressor.pos_embed, table, 1e-6)  # the fixed MAE sin-cos table


def test_llama3_rope_scaling_matches_meta_loop() -> None:
    s = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    d, theta = 128, 500000.0
    base = [1.0 / theta ** (2 * i / d) for i in range(d // 2)]
    expected = []
    for f in base:  # the published apply_scaling, element by element
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4.0:
            expected.append(f)
        elif wavelen > 8192 / 1.0:
            expected.append(f / 8.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            expected.append((1 - smooth) * f / 8.0 + smooth * f)
    got = llama3_inv_freq(torch.tensor(base, dtype=torch.float64), s)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    kinds = {
        ("keep" if g == b else "div" if abs(g - b / 8) < 1e-18 else "blend")
        for g, b in zip(got.tolist(), base, strict=True)
    }
    assert kinds == {"keep", "div", "blend"}
    tiny = build("tiny-llama3")
    rot = tiny.model.rotary_emb.inv_freq
    plain = naive.plain_inv_freq(tiny.config.text)
    assert (rot.double() - plain).abs().max() > 1e-6  # tiny-llama3 really scales


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3"])
def test_decoder_layer_gqa_rope_against_naive(name: str, gen: torch.Generator) -> None:
    m = build(name)
    cfg = m.config.text
    assert cfg.num_heads == 2 * cfg.num_kv_heads  # GQA is exercised
    b, n = 2, 7
    x = torch.randn(b, n, cfg.hidden_size, generator=gen)
    pos = torch.randint(0, 300, (b, n), generator=gen)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, 3] = False
    layer = m.model.layers[1]
    cos, sin = m.model.rotary_emb(pos, x.dtype)
    attend = lambda q, k, v: cached_attention(q, k, v, cache=None, start=0, key_valid=valid)  # noqa: E731
    with torch.no_grad():
        out = layer(x, cos, sin, attend)
    inv = m.model.rotary_emb.inv_freq
    ref = naive.llama_layer(m.state_dict(), "model.layers.1.", cfg, x.double(), pos, naive.hf_mask(valid), inv)
    close(out, ref)


def test_kv_cache_slots(gen: torch.Generator) -> None:
    cache = KVCache(2, 3, 10, 4, dtype=torch.float32, device="cpu")
    k1, v1 = torch.randn(2, 6, 3, 4, generator=gen), torch.randn(2, 6, 3, 4, generator=gen)
    k2, v2 = torch.randn(2, 1, 3, 4, generator=gen), torch.randn(2, 1, 3, 4, generator=gen)
    cache.update(0, k1, v1)
    kk, vv = cache.update(6, k2, v2)
    assert kk.shape == (2, 3, 7, 4)
    assert torch.equal(kk, torch.cat([k1, k2], 1).transpose(1, 2))
    assert torch.equal(vv, torch.cat([v1, v2], 1).transpose(1, 2))
