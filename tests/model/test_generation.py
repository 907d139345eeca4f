"""generate: several eos ids, sampling, streaming; official config fields the loader reads
(mm_projector_type, mm_vision_select_feature, tokenizer_model_max_length); video chunks."""

from __future__ import annotations

import dataclasses
import math

import naive_llava as naive
import pytest
import torch
from conftest import build, make_ids

from llava_mini import LlavaMini, LlavaMiniConfig
from llava_mini.model import sample_next_token


def _setup(gen: torch.Generator, name: str = "tiny", batch: int = 2):
    m = build(name, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    ids = make_ids(gen, batch, 7, m.config.text.vocab_size)
    images = torch.randn(batch, m.config.image_parts, 3, 28, 28, generator=gen)
    return m, ids, images


# ----------------------------------------------------------------------------- greedy, streaming
def test_stream_yields_the_generate_tokens_one_step_at_a_time(gen: torch.Generator) -> None:
    m, ids, images = _setup(gen)
    out = m.generate(ids, images, max_new_tokens=6)
    seen: list[torch.Tensor] = []
    assert torch.equal(m.generate(ids, images, max_new_tokens=6, streamer=seen.append), out)
    assert torch.equal(torch.stack(seen, 1), out)
    calls = []
    decode = m.decode
    m.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)
    stream = m.generate_stream(ids, images, max_new_tokens=6)
    first = next(stream)  # only the prefill has run: the token is out before any decode step
    assert len(calls) == 1 and torch.equal(first, out[:, 0])
    assert torch.equal(torch.stack([first, *stream], 1), out) and len(calls) == 6
    del m.decode
    with pytest.raises(ValueError, match="streamer"):
        m.generate(ids, images, streamer=3)


def test_several_eos_ids_stop_each_sample(gen: torch.Generator) -> None:
    m, ids, images = _setup(gen)
    free = m.generate(ids, images, max_new_tokens=6)
    pad = m.config.text.pad_token_id
    eos = [int(free[0, 3]), int(free[1, 1])]
    got = m.generate(ids, images, max_new_tokens=6, eos_token_id=eos)
    for i in range(2):
        row = free[i].tolist()
        stop = min(row.index(e) for e in eos if e in row)
        assert got[i, : stop + 1].tolist() == row[: stop + 1], i
        assert got[i, stop + 1 :].tolist() == [pad] * (5 - stop), i
    single = m.generate(ids, images, max_new_tokens=6, eos_token_id=eos[0])
    assert torch.equal(single, m.generate(ids, images, max_new_tokens=6, eos_token_id=[eos[0]]))
    vocab = m.config.text.vocab_size
    for bad in ([], "2", [vocab], [1, -1], True, 2.0):
        with pytest.raises(ValueError, match="eos_token_id"):
            m.generate(ids, images, max_new_tokens=2, eos_token_id=bad)


# ----------------------------------------------------------------------------- sampling
def _nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """float64, one row: the smallest most-probable set whose mass reaches top_p, renormalised."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = sorted(range(p.numel()), key=lambda i: -float(p[i]))
    keep, mass = [], 0.0
    for i in order:
        keep.append(i)
        mass += float(p[i])
        if mass >= top_p:
            break
    q = torch.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 1.0), (1.7, 0.75), (1.0, 0.3)])
def test_sampling_distribution(temperature: float, top_p: float, gen: torch.Generator) -> None:
    logits = torch.randn(1, 9, generator=gen) * 1.5
    n = 20000
    draws = sample_next_token(logits.expand(n, 9), temperature=temperature, top_p=top_p, generator=gen)
    freq = torch.bincount(draws, minlength=9).double() / n
    want = _nucleus(logits[0], temperature, top_p)
    assert bool((freq[want == 0] == 0).all()), (freq, want)  # outside the nucleus: never drawn
    assert (freq - want).abs().max() < 4.5 * math.sqrt(0.25 / n), (freq, want)


def test_sampled_generate_is_reproducible_and_greedy_at_tiny_top_p(gen: torch.Generator) -> None:
    m, ids, images = _setup(gen)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))

    def sampled(s: int, **kw) -> torch.Tensor:
        g = torch.Generator().manual_seed(s)
        return m.generate(ids, images, max_new_tokens=8, do_sample=True, generator=g, **kw)

    hot = {"temperature": 50.0}  # near uniform over 128 tokens: two seeds agree with chance ~ 128**-16
    assert torch.equal(sampled(seed, **hot), sampled(seed, **hot))
    assert not torch.equal(sampled(seed, **hot), sampled(seed + 1, **hot))
    greedy = m.generate(ids, images, max_new_tokens=8)
    assert torch.equal(sampled(seed, top_p=1e-9), greedy)  # the nucleus is the argmax alone
    assert torch.equal(m.generate(ids, images, max_new_tokens=8, temperature=0.1, top_p=0.5), greedy)
    bad = [({"temperature": 0.0}, "temperature"), ({"temperature": math.inf}, "temperature"),
           ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"generator": 3}, "generator")]  # fmt: skip
    for kw, word in bad:
        with pytest.raises(ValueError, match=word):
            m.generate(ids, images, max_new_tokens=2, do_sample=True, **kw)
    with pytest.raises(ValueError, match="do_sample"):
        m.generate(ids, images, max_new_tokens=2, do_sample=1)


# ----------------------------------------------------------------------------- official config fields
def _hf(**over) -> dict:
    base = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
            "compressor_size": 1, "prefusion_layer_num": 2, "compressor_num_heads": 4,
            "vision_config": {"image_size": 28, "patch_size": 7, "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 3, "num_attention_heads": 2}}  # fmt: skip
    base.update(over)
    return base


def test_projector_type_linear_is_the_official_default(gen: torch.Generator) -> None:
    assert LlavaMiniConfig.from_hf_config(_hf()).projector_type == "linear"  # absent: official 'linear'
    assert LlavaMiniConfig.from_hf_config(_hf(mm_projector_type="mlp2x_gelu")).projector_type == "mlp2x_gelu"
    assert all(LlavaMiniConfig.from_name(n).projector_type == "mlp2x_gelu" for n in LlavaMiniConfig.names())
    with pytest.raises(ValueError, match="projector_type: expected one of"):
        LlavaMiniConfig.from_hf_config(_hf(mm_projector_type="mlp3x_gelu"))
    cfg = LlavaMiniConfig.from_name("tiny").replace(projector_type="linear")
    m = LlavaMini(cfg, backend="reference").init_random_weights(1).eval()
    sd = m.state_dict()
    assert {k for k in sd if "mm_projector" in k} == {"model.mm_projector.weight", "model.mm_projector.bias"}
    x = torch.randn(3, 5, 32, generator=gen)
    want = x.double() @ sd["model.mm_projector.weight"].double().T + sd["model.mm_projector.bias"].double()
    assert (m.project(x).double() - want).abs().max() < 1e-5
    ids = make_ids(gen, 1, 6, 128)
    with torch.no_grad():
        assert m.generate(ids, torch.randn(1, 1, 3, 28, 28, generator=gen), max_new_tokens=3).shape == (1, 3)


def test_select_feature_cls_patch(gen: torch.Generator) -> None:
    hf = {k: v for k, v in _hf(mm_vision_select_feature="cls_patch").items() if k != "compressor_size"}
    cfg = LlavaMiniConfig.from_hf_config(hf)  # the baseline: no compressor_size
    assert cfg.vision.select_feature == "cls_patch"
    base = LlavaMiniConfig.from_name("tiny-baseline")
    cls_cfg = base.replace(vision=dataclasses.replace(base.vision, select_feature="cls_patch"))
    assert cls_cfg.llm_tokens_per_image == 17
    m = LlavaMini(cls_cfg, backend="reference").init_random_weights(2).eval()
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    hidden = naive.clip_hidden_states(m.state_dict(), cls_cfg.vision, images[:, 0], naive.CLIP_PREFIX)[-2]
    with torch.no_grad():
        feats = m.encode_images(images[:, 0])
        mm = m.prepare_inputs(make_ids(gen, 2, 5, 128, image_at=1), images)
    assert feats.shape == (2, 17, 32) and (feats.double() - hidden).abs().max() < 1e-5  # CLS first, kept
    assert mm.inputs_embeds.shape[1] == 5 - 1 + 17
    with pytest.raises(ValueError, match="select_feature"):  # a compressor needs the square patch grid
        LlavaMiniConfig.from_hf_config(_hf(mm_vision_select_feature="cls_patch"))
    with pytest.raises(ValueError, match="select_feature"):
        LlavaMiniConfig.from_hf_config(_hf(mm_vision_select_feature="cls"))


@pytest.mark.parametrize("name", ["tiny", "tiny-baseline"])
def test_tokenizer_model_max_length_truncates_the_spliced_sequence(name: str, gen: torch.Generator) -> None:
    m = build(name)
    assert LlavaMiniConfig.from_hf_config(_hf(tokenizer_model_max_length=9)).tokenizer_model_max_length == 9
    ids = make_ids(gen, 2, 12, 128, image_at=3)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        full = m.prepare_inputs(ids, images, mask)
        lengths = full.num_tokens.tolist()
        limit = lengths[1] + 1  # between the two lengths: only sample 0 is cut
        m.config = m.config.replace(tokenizer_model_max_length=limit)
        cut = m.prepare_inputs(ids, images, mask)
        assert cut.num_tokens.tolist() == [limit, lengths[1]]
        assert cut.inputs_embeds.shape[1] == limit
        assert torch.equal(cut.inputs_embeds, full.inputs_embeds[:, :limit])
        assert torch.equal(cut.position_ids, full.position_ids[:, :limit])
        got = m.generate(ids, images, mask, max_new_tokens=4)
        m.config = m.config.replace(tokenizer_model_max_length=None)
        alone = m.generate(
            ids[:1],
            images[:1],
            max_new_tokens=4,
            inputs=type(full)(
                full.inputs_embeds[:1, :limit], full.attention_mask[:1, :limit], full.position_ids[:1, :limit]
            ),
        )
    assert torch.equal(got[0], alone[0])
    with pytest.raises(ValueError, match="tokenizer_model_max_length"):
        LlavaMiniConfig.from_hf_config(_hf(tokenizer_model_max_length=0))


# ----------------------------------------------------------------------------- video chunks
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_prepare_inputs_takes_video_chunks(backend: str, gen: torch.Generator) -> None:
    m = build("tiny", backend=backend)
    ids = make_ids(gen, 1, 6, 128, image_at=2)
    video = torch.randn(1, 5, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        whole = m.prepare_inputs(ids, video)
        chunks = m.prepare_inputs(ids, iter([video[:, :2], video[:, 2:3], video[:, 3:]]))
        official = m.prepare_inputs(ids, (video[:, :3], video[:, 3:]), prefusion="official")
    assert (chunks.inputs_embeds - whole.inputs_embeds).abs().max() < 1e-5
    assert (official.inputs_embeds - whole.inputs_embeds).abs().max() < 1e-5
    bad = video.clone()
    bad[0, 4, 0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        m.prepare_inputs(ids, iter([video[:, :2], bad[:, 2:]]))
    with pytest.raises(ValueError, match="video chunk 1"):
        m.prepare_inputs(ids, [video[:, :2], video[0]])
    with pytest.raises(ValueError, match="at least one frame"):
        m.prepare_inputs(ids, iter([]))
