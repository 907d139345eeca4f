"""FusedPreFusion vs the reference model's pre-fusion (tiny configs, fp32): image, HD, video,
padding, position ids, the prefix cache, batched frames; and the FLOP counts at 7B shapes."""

from __future__ import annotations

import copy

import pytest
import torch
from utils import assert_close, rel_error

from llava_mini import IMAGE_TOKEN_INDEX, LlavaMini, LlavaMiniConfig
from lmini_kernels.modules.prefusion import FusedPreFusion


def build(name: str, seed: int = 0) -> LlavaMini:
    m = LlavaMini(LlavaMiniConfig.from_name(name), backend="reference").init_random_weights(seed).eval()
    with torch.no_grad():  # sharper attention, so that wrong rows or positions show
        for layer in m.model.prefusion_layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
    return m


def make_ids(b: int, n: int, vocab: int, pad_tail: int = 0) -> torch.Tensor:
    ids = torch.randint(1, vocab, (b, n))
    ids[:, 1] = IMAGE_TOKEN_INDEX  # the placeholder is a padded row of the official pre-fusion
    if pad_tail:
        ids[-1, n - pad_tail :] = 0
    ids[0, n // 2] = 0  # a pad in the middle too
    return ids


def capture_prefusion(model: LlavaMini) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record the (sequence, padding mask) inputs of every reference pre-fusion call."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    orig = model.prefusion

    def spy(x, padding_mask):
        calls.append((x.clone(), padding_mask.clone()))
        return orig(x, padding_mask)

    model.prefusion = spy  # type: ignore[method-assign]
    return calls


def split(model: LlavaMini, x: torch.Tensor, mask: torch.Tensor, n_text: int):
    q = model.config.num_queries
    nv = x.shape[1] - q - n_text
    return x[:, :nv], x[:, nv : nv + q], x[:, nv + q :], mask[:, nv + q :]


@pytest.mark.parametrize("name", ["tiny", "tiny-c2", "tiny-llama3", "tiny-hd"])
def test_image_and_hd_match_reference(name: str) -> None:
    model = build(name)
    cfg = model.config
    parts = cfg.image_parts
    b, n = 3, 11
    images = torch.randn(b, parts, 3, 28, 28)
    ids = make_ids(b, n, cfg.text.vocab_size, pad_tail=3)
    calls = capture_prefusion(model)
    with torch.no_grad():
        ref_vis, ref_text = model.encode_images_mini(images, ids)
        vision, compressed, text, pad = split(model, *calls[0], n)
        assert torch.equal(pad, ids <= 0)
        fused = model.fused_prefusion(backend="cpu")
        vis, txt = fused(vision, compressed, text, pad)
    assert_close(vis, ref_vis.double())
    assert_close(txt, ref_text.double())
    assert torch.equal(txt[pad], text[pad])  # padded rows: raw embeddings, bit-exact


def test_cache_serves_several_questions() -> None:
    """prefill once, fuse several questions (different lengths and padding, batched or not)."""
    model = build("tiny-c2")
    cfg = model.config
    images = torch.randn(1, 1, 3, 28, 28)
    fused = model.fused_prefusion(backend="cpu")
    calls = capture_prefusion(model)
    with torch.no_grad():
        model.encode_images_mini(images, make_ids(1, 5, cfg.text.vocab_size))
        vision, compressed, _, _ = split(model, *calls[0], 5)
        cache = fused.prefill(vision, compressed)
        for n, b in ((5, 1), (9, 2), (14, 3)):
            ids = make_ids(b, n, cfg.text.vocab_size, pad_tail=2)
            ref_vis, ref_text = model.encode_images_mini(images.expand(b, -1, -1, -1, -1), ids)
            vis, txt = fused.fuse(cache, model.embed(ids), ids <= 0)
            assert_close(vis, ref_vis.double())
            assert_close(txt, ref_text.double())


def test_one_pass_returns_the_prefill_cache() -> None:
    model = build("tiny-llama3")
    fused = model.fused_prefusion(backend="cpu")
    h = model.config.text.hidden_size
    vision, comp, text = torch.randn(2, 16, h), torch.randn(2, 1, h), torch.randn(2, 9, h)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    pad[0, 2] = True
    with torch.no_grad():
        vis, txt, cache = fused(vision, comp, text, pad, return_cache=True)
        ref = fused.prefill(vision, comp)
        for a, r in zip(
            [*cache.keys, *cache.values, cache.compressed], [*ref.keys, *ref.values, ref.compressed], strict=True
        ):
            assert_close(a, r.double())
        vis2, txt2 = fused.fuse(cache, text, pad)
    assert_close(vis2, vis.double())
    assert_close(txt2, txt.double())


def test_pruned_last_layer_equals_full_rows() -> None:
    """The cache's compressed rows equal the full computation's, and changing the vision rows
    changes them (the test can see a wrong prefix)."""
    model = build("tiny-c2")
    fused = model.fused_prefusion(backend="reference")
    h = model.config.text.hidden_size
    vision, comp, text = torch.randn(2, 16, h), torch.randn(2, 4, h), torch.randn(2, 6, h)
    with torch.no_grad():
        pad = torch.zeros(2, 26, dtype=torch.bool)
        full = model.prefusion(torch.cat([vision, comp, text], 1), pad)
        cache = fused.prefill(vision, comp)
        assert_close(cache.compressed, full[:, 16:20].double())
        assert len(cache.keys) == model.config.prefusion_layers and cache.prefix_len == 20
        other = fused.prefill(vision + 0.5, comp)
    assert rel_error(other.compressed, cache.compressed) > 1e-3


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_video_batched_frames_match_reference_loop(chunk: int) -> None:
    model = build("tiny")
    cfg = model.config
    b, frames, n = 2, 7, 8
    video = torch.randn(b, frames, 1, 3, 28, 28)
    ids = make_ids(b, n, cfg.text.vocab_size, pad_tail=2)
    calls = capture_prefusion(model)
    with torch.no_grad():
        ref_tokens, ref_text = model.encode_multimodal(ids, video)
        assert len(calls) == frames
        parts = [split(model, x, m, n) for x, m in calls]
        vision = torch.stack([p[0] for p in parts], 1)
        comp = torch.stack([p[1] for p in parts], 1)
        text, pad = parts[0][2], parts[0][3]
        fused = model.fused_prefusion(backend="cpu")
        chunks = ((vision[:, t : t + chunk], comp[:, t : t + chunk]) for t in range(0, frames, chunk))
        tokens, txt = fused.fuse_video(chunks, text, pad)
    assert tokens.shape == ref_tokens.shape == (b, frames * cfg.num_queries, cfg.text.hidden_size)
    assert_close(tokens, ref_tokens.double())
    assert_close(txt, ref_text.double())


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_attention_backends_agree(backend: str) -> None:
    model = build("tiny-llama3")
    h = model.config.text.hidden_size
    vision, comp, text = torch.randn(2, 16, h), torch.randn(2, 1, h), torch.randn(2, 7, h)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        # the oracle: the official path (every row of every layer) in float64, not this module
        ref = copy.deepcopy(model).double().official_prefusion(vision.double(), comp.double(), text.double(), pad)
        out = model.fused_prefusion(backend=backend)(vision, comp, text, pad)
    for o, r in zip(out, ref, strict=True):
        assert_close(o, r)


def test_shares_parameters_and_loads_hf_names() -> None:
    model = build("tiny")
    fused = model.fused_prefusion()
    assert fused.layers[0].self_attn.q_proj.weight is model.model.prefusion_layers[0].self_attn.q_proj.weight
    keys = set(fused.state_dict())
    assert keys == {f"layers.{k}" for k in model.model.prefusion_layers.state_dict()}
    t = model.config.text
    fresh = FusedPreFusion(
        t.hidden_size,
        t.num_heads,
        t.num_kv_heads,
        t.intermediate_size,
        2,
        t.rms_norm_eps,
        model.model.rotary_emb.inv_freq,
    )
    fresh.layers.load_state_dict(model.model.prefusion_layers.state_dict())  # HF LlamaDecoderLayer names
    h = t.hidden_size
    args = (torch.randn(1, 16, h), torch.randn(1, 1, h), torch.randn(1, 5, h))
    with torch.no_grad():
        assert_close(fresh(*args)[1], fused(*args)[1].double())


def test_bad_inputs_name_the_argument() -> None:
    model = build("tiny")
    fused = model.fused_prefusion()
    h = model.config.text.hidden_size
    v, c, t = torch.randn(2, 16, h), torch.randn(2, 1, h), torch.randn(2, 5, h)
    with pytest.raises(ValueError, match="vision_tokens"):
        fused.prefill(v[..., :8], c)
    with pytest.raises(ValueError, match="compressed_tokens"):
        fused.prefill(v, c[:1])
    cache = fused.prefill(v, c)
    with pytest.raises(ValueError, match="text_embeds"):
        fused.fuse(cache, torch.randn(3, 5, h))
    with pytest.raises(ValueError, match="text_padding_mask"):
        fused.fuse(cache, t, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunks"):
        fused.fuse_video([(v, c)], t)
    with pytest.raises(TypeError, match="text_embeds: dtype torch.float64"):
        fused(v, c, t.double())
    with pytest.raises(TypeError, match="vision_tokens: dtype torch.bfloat16"):
        fused.prefill(v.bfloat16(), c)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_heads", 0), ("num_kv_heads", 0), ("hidden_size", 0), ("intermediate_size", -1), ("num_layers", 0),
     ("rms_norm_eps", 0.0), ("rms_norm_eps", float("nan")), ("num_heads", 2.5)],
)  # fmt: skip
def test_constructor_rejects_bad_sizes(field, value) -> None:
    kw = dict(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=48, num_layers=2, rms_norm_eps=1e-5)
    kw[field] = value
    with pytest.raises(ValueError, match=field):
        FusedPreFusion(**kw, inv_freq=torch.ones(4))


def test_empty_batch_and_empty_chunk_as_the_op() -> None:
    """B = 0 gives empty outputs on every entry point; a chunk of 0 frames adds nothing."""
    model = build("tiny")
    fused = model.fused_prefusion()
    h = model.config.text.hidden_size
    v, c, t = torch.randn(2, 16, h), torch.randn(2, 1, h), torch.randn(2, 5, h)
    with torch.no_grad():
        comp, text = fused(v[:0], c[:0], t[:0])
        assert comp.shape == (0, 1, h) and text.shape == (0, 5, h)
        comp, text = fused.fuse(fused.prefill(v[:0], c[:0]), t[:0])
        assert comp.shape == (0, 1, h) and text.shape == (0, 5, h)
        empty = (v[:, None][:, :0], c[:, None][:, :0])
        full = (v[:, None], c[:, None])
        tokens, mean = fused.fuse_video([empty, full], t)
        want_tokens, want_mean = fused.fuse_video([full], t)
    assert torch.equal(tokens, want_tokens) and torch.equal(mean, want_mean)


# ----------------------------------------------------------------------------- FLOPs
def _count(fn, weights_only: bool = False) -> int:
    """FLOPs of ``fn`` under FlopCounterMode; ``weights_only``: the weight matmuls (aten.mm of
    the Linear layers) without the attention products (the paper's convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    if weights_only:
        return sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))
    return counter.get_total_flops()


def test_flops_at_vicuna_7b_shapes_on_meta() -> None:
    """Pre-fusion per image with 43 text tokens, counted by FlopCounterMode on meta tensors:
    attention included 1.029 T (official) -> 0.829 T (pruned, one pass), a follow-up question on a cached
    image 0.071 T; weight matmuls only 1.004 -> 0.809 T, follow-up 0.070 T."""
    cfg = LlavaMiniConfig.from_name("llava-mini-vicuna-7b")
    t = cfg.text
    with torch.device("meta"):
        model = LlavaMini(cfg, backend="reference")
    fused = model.fused_prefusion()
    h, nv, nq, n = t.hidden_size, 576, 1, 43
    vision, comp, text = (torch.empty(1, k, h, device="meta") for k in (nv, nq, n))
    pad = torch.zeros(1, n, dtype=torch.bool, device="meta")
    full_pad = torch.zeros(1, nv + nq + n, dtype=torch.bool, device="meta")
    official = _count(lambda: model.prefusion(torch.cat([vision, comp, text], 1), full_pad))
    pruned = _count(lambda: fused(vision, comp, text, pad))
    cache = fused.prefill(vision, comp)
    followup = _count(lambda: fused.fuse(cache, text, pad))
    split = _count(lambda: fused.fuse(fused.prefill(vision, comp), text, pad))

    layer = 4 * h * h + 3 * h * t.intermediate_size  # weight parameters of one layer (MHA: Hkv = H)
    s, layers = nv + nq + n, cfg.prefusion_layers

    def attn(lq: int, lk: int) -> int:
        return 4 * lq * lk * h

    assert official == layers * (2 * layer * s + attn(s, s))
    kv = 2 * h * h
    p = nv + nq
    prefill = (layers - 1) * (2 * layer * p + attn(p, p)) + 2 * kv * p + 2 * (layer - kv) * nq + attn(nq, p)
    assert followup == layers * (2 * layer * n + attn(n, s))
    assert split == prefill + followup  # prefill once, then the question
    # one pass (first question): the same weight GEMMs, attention over the whole sequence
    kept = nq + n
    assert pruned == (layers - 1) * (2 * layer * s + attn(s, s)) + 2 * kv * s + 2 * (layer - kv) * kept + attn(kept, s)
    assert (official, pruned, followup) == (1_028_972_871_680, 828_640_329_728, 71_364_247_552)
    # weight matmuls only (the paper's convention): 1.00 T -> 0.81 T, follow-up 0.07 T
    w_official = _count(lambda: model.prefusion(torch.cat([vision, comp, text], 1), full_pad), weights_only=True)
    w_pruned = _count(lambda: fused(vision, comp, text, pad), weights_only=True)
    w_followup = _count(lambda: fused.fuse(cache, text, pad), weights_only=True)
    assert w_official == layers * 2 * layer * s == 1_003_780_833_280
    assert w_followup == layers * 2 * layer * n == 69_617_057_792
    assert w_pruned == 809_299_345_408
    assert [round(x / 1e12, 2) for x in (w_official, w_pruned, w_followup)] == [1.00, 0.81, 0.07]
