"""Splicing into the LLM input, the LLM itself, the KV cache and greedy decoding."""

from __future__ import annotations

import naive_llava as naive
import pytest
import torch
from conftest import build, make_ids

from llava_mini import IMAGE_TOKEN_INDEX


def test_prepare_inputs_splices_at_placeholder(gen: torch.Generator) -> None:
    m = build("tiny-c2")
    ids = make_ids(gen, 2, 7, m.config.text.vocab_size, image_at=3)
    ids[1, 3], ids[1, 4] = 5, IMAGE_TOKEN_INDEX  # sample 1: placeholder one position later
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 6] = False  # right padding through attention_mask
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        mm = m.prepare_inputs(ids, images, mask)
        vis, text = m.encode_multimodal(ids, images)
    q = m.config.num_queries
    assert mm.inputs_embeds.shape == (2, 7 - 1 + q, 64)
    assert mm.num_tokens.tolist() == [6 + q, 5 + q]
    e0 = torch.cat([text[0, :3], vis[0], text[0, 4:]])
    e1 = torch.cat([text[1, :4], vis[1], text[1, 5:6]])
    assert torch.equal(mm.inputs_embeds[0], e0)
    assert torch.equal(mm.inputs_embeds[1, : 5 + q], e1)
    assert torch.equal(mm.inputs_embeds[1, 5 + q :], torch.zeros(1, 64))
    assert mm.position_ids[0].tolist() == list(range(6 + q))
    assert mm.position_ids[1, : 5 + q].tolist() == list(range(5 + q))


def test_no_placeholder_and_errors(gen: torch.Generator) -> None:
    m = build("tiny")
    ids = make_ids(gen, 1, 5, m.config.text.vocab_size, image_at=None)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    assert m.prepare_inputs(ids, images).inputs_embeds.shape == (1, 5, 64)
    assert m.generate(ids, max_new_tokens=2).shape == (1, 2)  # text only
    two = make_ids(gen, 1, 5, m.config.text.vocab_size)
    two[0, 4] = IMAGE_TOKEN_INDEX
    with pytest.raises(ValueError, match="at most one"):
        m.prepare_inputs(two, images)
    with pytest.raises(ValueError, match="no images"):
        m.prepare_inputs(make_ids(gen, 1, 5, m.config.text.vocab_size))


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3", "tiny-baseline"])
def test_llm_logits_against_naive(name: str, gen: torch.Generator) -> None:
    m = build(name)
    ids = make_ids(gen, 1, 8, m.config.text.vocab_size)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        mm = m.prepare_inputs(ids, images)
        logits = m(ids, images)
    ref = naive.llm_logits(m.state_dict(), m.config, mm.inputs_embeds, m.model.rotary_emb.inv_freq)
    err = (logits.double() - ref).abs().max().item()
    assert err < 3e-5 * max(1.0, ref.abs().max().item()), err


def test_baseline_feeds_all_patch_tokens(gen: torch.Generator) -> None:
    m = build("tiny-baseline")
    ids = make_ids(gen, 1, 6, m.config.text.vocab_size, image_at=1)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        mm = m.prepare_inputs(ids, images)
        feats = naive.projector(m.state_dict(), naive.clip_features(m.state_dict(), m.config, images[:, 0]))
    assert mm.inputs_embeds.shape == (1, 6 - 1 + 16, 64)
    assert (mm.inputs_embeds[0, 1:17].double() - feats[0]).abs().max() < 1e-5
    assert torch.equal(mm.inputs_embeds[0, :1], m.model.embed_tokens.weight[ids[0, :1]])


def greedy_without_cache(m, embeds: torch.Tensor, steps: int) -> list[int]:
    """Recompute the whole sequence at every step (no KV cache)."""
    out = []
    x = embeds
    for _ in range(steps):
        n = x.shape[1]
        with torch.no_grad():
            logits = m.decode(x, torch.arange(n)[None], torch.ones(1, n, dtype=torch.bool))
        tok = int(logits[0, -1].argmax())
        out.append(tok)
        x = torch.cat([x, m.model.embed_tokens.weight[tok][None, None]], dim=1)
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny-hd", "tiny-llama3"])
def test_kv_cache_generate_matches_recompute(name: str, gen: torch.Generator) -> None:
    m = build(name, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    ids = make_ids(gen, 1, 7, m.config.text.vocab_size)
    images = torch.randn(1, m.config.image_parts, 3, 28, 28, generator=gen)
    with torch.no_grad():
        mm = m.prepare_inputs(ids, images)
        got = m.generate(ids, images, max_new_tokens=6)
    assert got[0].tolist() == greedy_without_cache(m, mm.inputs_embeds, 6)


def test_padded_batch_decodes_like_single_samples(gen: torch.Generator) -> None:
    m = build("tiny")
    vocab = m.config.text.vocab_size
    ids = make_ids(gen, 3, 9, vocab, image_at=1)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 4:] = False
    images = torch.randn(3, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        batch = m.generate(ids, images, mask, max_new_tokens=5)
        for i in range(3):
            n = int(mask[i].sum())
            single = m.generate(ids[i : i + 1, :n], images[i : i + 1], max_new_tokens=5)
            assert batch[i].tolist() == single[0].tolist(), i


def test_eos_stops_and_pads(gen: torch.Generator) -> None:
    m = build("tiny")
    ids = make_ids(gen, 1, 6, m.config.text.vocab_size)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    free = m.generate(ids, images, max_new_tokens=4)[0].tolist()
    eos = free[1]
    stopped = m.generate(ids, images, max_new_tokens=4, eos_token_id=eos)[0].tolist()
    first = free.index(eos)
    assert stopped[: first + 1] == free[: first + 1]
    assert stopped[first + 1 :] == [m.config.text.pad_token_id] * (3 - first)


def test_tiny_model_is_deterministic(gen: torch.Generator) -> None:
    a, b = build("tiny", seed=7), build("tiny", seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], build("tiny", seed=8).state_dict()[k]) for k in sa)
    ids = make_ids(gen, 2, 8, a.config.text.vocab_size)
    video = torch.randn(2, 3, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        assert torch.equal(a(ids, video), b(ids, video))
        assert torch.equal(a.generate(ids, video, max_new_tokens=5), a.generate(ids, video, max_new_tokens=5))


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3"])
def test_kv_cache_logits_match_recompute_step_by_step(name: str, gen: torch.Generator) -> None:
    """Every decode step's logits (not only its argmax: a random model's logit gaps hide a
    4e-4 error such as a position id off by one) equal a cache-free recompute over the whole
    sequence so far, per sample of a padded batch, in float32."""
    m = build(name, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    vocab = m.config.text.vocab_size
    ids = make_ids(gen, 2, 8, vocab, image_at=1)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    steps: list[torch.Tensor] = []
    decode = m.decode

    def recording(*args, **kwargs):
        logits = decode(*args, **kwargs)
        steps.append(logits.clone())
        return logits

    m.decode = recording
    with torch.no_grad():
        mm = m.prepare_inputs(ids, images, mask)
        out = m.generate(ids, images, mask, max_new_tokens=5)
    del m.decode
    lengths = mm.attention_mask.sum(-1)
    for i in range(2):
        n = int(lengths[i])
        x = mm.inputs_embeds[i : i + 1, :n]
        for step in range(5):
            with torch.no_grad():
                full = m.decode(x, torch.arange(x.shape[1])[None], torch.ones(1, x.shape[1], dtype=torch.bool))
            want = full[0, -1]
            got = steps[step][i, n - 1] if step == 0 else steps[step][i, -1]
            assert (got - want).norm() <= 1e-5 * want.norm(), (i, step)
            x = torch.cat([x, m.model.embed_tokens.weight[out[i, step]][None, None]], dim=1)
