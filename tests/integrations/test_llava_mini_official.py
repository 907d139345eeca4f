"""apply_lmini_kernels_to_llava_mini on a stand-in of the official LLaVA-Mini (official_standin.py).

Every case compares the patched instance against the same instance unpatched (the official
code path of the stand-in), on fresh random weights and inputs: logits within 1e-5 relative
norm in float32 and the same greedy tokens. Image, C = 2, HD, video, lists, padded batches,
labels, a follow-up question on a cached image (and a changed image: no stale answer), both
transformers layer conventions, revert, refused models rolled back, and the one entry point.
"""

from __future__ import annotations

import re

import pytest
import torch
from official_standin import IMAGE_TOKEN_INDEX, build_standin
from transformers import LlamaConfig, LlamaForCausalLM
from utils import rel_error

import lmini_kernels
from lmini_kernels.integrations import (
    LlavaMiniPatch,
    UnsupportedModelError,
    apply_lmini_kernels,
    apply_lmini_kernels_to_llava_mini,
    revert_lmini_kernels,
)
from lmini_kernels.integrations import llava_mini_official as official

TOL = 1e-5
CONVENTIONS = ("4.43", "5.x")


def make_inputs(model, batch=2, length=11, *, parts=1, frames=None, seed=0, pad=True):
    """input_ids with the placeholder at a different place per sample, right padding of
    different lengths (id 0, attention mask False), and random pixels."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    for b in range(batch):
        ids[b, 1 + b % 3] = IMAGE_TOKEN_INDEX
        if pad and b % 2 == 1:
            cut = length - 2 - b % 3
            ids[b, cut:], mask[b, cut:] = 0, False
    size = model.config.vision_config_obj.image_size
    shape = (batch, parts, 3, size, size) if frames is None else (batch, frames, parts, 3, size, size)
    return ids, mask, torch.randn(*shape, generator=gen)


def logits(model, ids, mask, images, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, images=images, **kw)


def greedy(model, ids, mask, images, n=6):
    return model.generate(ids, images=images, attention_mask=mask, max_new_tokens=n, do_sample=False)


def check_same(model, ids, mask, images, *, tokens=True, **options):
    """Unpatched, then patched: logits within TOL (valid rows), equal greedy tokens. Returns the handle."""
    ref = logits(model, ids, mask, images)
    ref_tokens = greedy(model, ids, mask, images) if tokens else None
    handle = apply_lmini_kernels_to_llava_mini(model, **options)
    out = logits(model, ids, mask, images)
    assert out.logits.shape == ref.logits.shape
    err = rel_error(out.logits, ref.logits)
    assert err <= TOL, f"patched logits differ: relative error {err:.2e}"
    if tokens:
        assert torch.equal(greedy(model, ids, mask, images), ref_tokens)
    return handle


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls into lmini_kernels.prefusion_attention and calls of the official pre-fusion
    layers, so that a patch that silently runs the official code fails."""
    calls = {"op": 0, "official": 0}
    real = lmini_kernels.prefusion_attention

    def counted(*a, **k):
        calls["op"] += 1
        return real(*a, **k)

    monkeypatch.setattr(lmini_kernels, "prefusion_attention", counted)
    return calls


def count_official_layers(model, calls):
    for layer in model.get_model().prefusion_layers:
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__("official", calls["official"] + 1))


# ------------------------------------------------------------------------------ results
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("compressor_size", [1, 2])
def test_image_batch_matches_official(convention, compressor_size, fused_calls):
    model = build_standin(seed=1, layer_convention=convention, compressor_size=compressor_size)
    ids, mask, images = make_inputs(model, batch=3, length=13, seed=2)
    check_same(model, ids, mask, images)
    count_official_layers(model, fused_calls)
    fused_calls["op"] = 0
    logits(model, ids, mask, images)
    assert fused_calls["op"] > 0 and fused_calls["official"] == 0


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_hd_matches_official(convention):
    # resolution_ratio 2: four sub-images re-tiled into one 8 x 8 grid plus the global view
    model = build_standin(seed=3, layer_convention=convention, compressor_size=2)
    ids, mask, images = make_inputs(model, batch=2, length=9, parts=5, seed=4)
    check_same(model, ids, mask, images)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("chunk", [2, None])
def test_video_matches_official(convention, chunk):
    # 5 frames in chunks of 2 (an uneven last chunk) or the CPU default of 4
    model = build_standin(seed=5, layer_convention=convention)
    ids, mask, video = make_inputs(model, batch=2, length=10, frames=5, seed=6)
    check_same(model, ids, mask, video, video_chunk_frames=chunk)


def test_hd_video_matches_official():
    model = build_standin(seed=7, compressor_size=2)
    ids, mask, video = make_inputs(model, batch=1, length=8, parts=5, frames=3, seed=8, pad=False)
    check_same(model, ids, mask, video, tokens=False, video_chunk_frames=2)


def test_list_of_images_and_videos_matches_official():
    model = build_standin(seed=9)
    ids, mask, images = make_inputs(model, batch=2, length=9, seed=10)
    _, _, video = make_inputs(model, batch=1, length=9, frames=3, seed=11)
    inputs = [images[0], video[0]]  # sample 0 an image (parts, 3, H, W), sample 1 a video (T, parts, 3, H, W)
    check_same(model, ids, mask, inputs, tokens=False, video_chunk_frames=2)


def test_labels_and_loss_match_official():
    # with labels, answer tokens count as pre-fusion padding (input_ids * (labels == -100))
    model = build_standin(seed=12)
    ids, mask, images = make_inputs(model, batch=2, length=12, seed=13)
    labels = torch.full_like(ids, -100)
    labels[:, 7:] = ids[:, 7:]
    labels[~mask] = -100
    ref = logits(model, ids, mask, images, labels=labels)
    apply_lmini_kernels_to_llava_mini(model)
    out = logits(model, ids, mask, images, labels=labels)
    assert rel_error(out.logits, ref.logits) <= TOL
    assert torch.isfinite(ref.loss) and abs(out.loss.item() - ref.loss.item()) <= TOL * abs(ref.loss.item())


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_and_no_mask_match_official(side):
    model = build_standin(seed=14, padding_side=side)
    ids, mask, images = make_inputs(model, batch=3, length=10, seed=15)
    check_same(model, ids, mask, images, tokens=False)
    ref = model.__dict__["_lmini_kernels_patch"]
    ref.revert()
    check_same(model, ids, None, images, tokens=False)  # no attention mask: every position kept


def test_splice_returns_what_official_returns():
    # the tuple prepare_inputs_labels_for_multimodal returns, element by element (labels
    # default to -100 and are returned, position ids only when given)
    model = build_standin(seed=16)
    ids, mask, images = make_inputs(model, batch=3, length=10, seed=17)
    for position_ids in (None, torch.arange(10).expand(3, 10)):
        with torch.no_grad():
            ref = model.prepare_inputs_labels_for_multimodal(ids, position_ids, mask, None, None, images)
            handle = apply_lmini_kernels_to_llava_mini(model)
            out = model.prepare_inputs_labels_for_multimodal(ids, position_ids, mask, None, None, images)
            handle.revert()
        assert out[0] is None and out[3] is None
        for r, o in zip(ref[1:3] + ref[5:], out[1:3] + out[5:], strict=True):
            assert (r is None) == (o is None)
            if r is not None:
                assert r.dtype == o.dtype and torch.equal(r, o)
        assert rel_error(out[4], ref[4]) <= TOL


# ------------------------------------------------------------------------------ the prefix cache
def test_follow_up_question_hits_the_cache_and_a_changed_image_misses():
    model = build_standin(seed=18, compressor_size=2)
    ids, mask, images = make_inputs(model, batch=2, length=11, seed=19)
    ids2, mask2, _ = make_inputs(model, batch=2, length=7, seed=20)  # another question, another length
    ref1, ref2 = logits(model, ids, mask, images), logits(model, ids2, mask2, images)
    handle = apply_lmini_kernels_to_llava_mini(model)
    assert rel_error(logits(model, ids, mask, images).logits, ref1.logits) <= TOL
    assert (handle.stats.hits, handle.stats.misses) == (0, 1)
    assert rel_error(logits(model, ids2, mask2, images).logits, ref2.logits) <= TOL
    assert (handle.stats.hits, handle.stats.misses) == (1, 1)

    images.mul_(-1.5)  # the same tensor, changed in place
    handle.revert()
    ref3 = logits(model, ids2, mask2, images)
    assert rel_error(ref3.logits, ref2.logits) > 1e-3  # the change matters
    handle = apply_lmini_kernels_to_llava_mini(model)
    images_again = images  # noqa: F841 - still the same object
    out3 = logits(model, ids2, mask2, images)
    assert handle.stats.misses == 1 and rel_error(out3.logits, ref3.logits) <= TOL


def test_cache_sees_in_place_image_and_weight_changes_while_patched():
    model = build_standin(seed=21)
    ids, mask, images = make_inputs(model, batch=1, length=9, seed=22, pad=False)
    handle = apply_lmini_kernels_to_llava_mini(model)
    first = logits(model, ids, mask, images).logits
    images.add_(0.5)
    second = logits(model, ids, mask, images).logits
    assert handle.stats.hits == 0 and rel_error(second, first) > 1e-4
    with torch.no_grad():  # an optimizer-like in-place step on a pre-fusion weight
        model.get_model().prefusion_layers[0].mlp.up_proj.weight.mul_(1.3)
    third = logits(model, ids, mask, images).logits
    assert handle.stats.hits == 0 and rel_error(third, second) > 1e-4
    handle.revert()
    assert rel_error(logits(model, ids, mask, images).logits, third) <= TOL


def test_cache_bypassed_when_unsafe():
    model = build_standin(seed=23)
    ids, mask, images = make_inputs(model, batch=1, length=8, seed=24, pad=False)
    handle = apply_lmini_kernels_to_llava_mini(model)
    with torch.inference_mode():  # inference tensors have no version counter
        img = images.clone()
        logits(model, ids, mask, img)
        logits(model, ids, mask, img)
    assert handle.stats.uncacheable == 2 and handle.stats.hits == 0
    out = model(input_ids=ids, attention_mask=mask, images=images)  # grad recorded: no cache
    out.logits.sum().backward()
    assert handle.stats.uncacheable == 3
    assert model.get_model().prefusion_layers[0].self_attn.q_proj.weight.grad is not None


# ------------------------------------------------------------------------------ revert
def test_revert_restores_modules_and_outputs():
    model = build_standin(seed=25, compressor_size=2)
    ids, mask, images = make_inputs(model, batch=2, length=9, seed=26)
    original = model.get_model().compressor
    keys = list(model.state_dict())
    before = logits(model, ids, mask, images).logits
    handle = apply_lmini_kernels_to_llava_mini(model)
    assert isinstance(model.get_model().compressor, lmini_kernels.FusedResampler)
    assert list(model.state_dict()) == keys  # same checkpoint layout while patched
    assert model.get_model().compressor.query is original.query  # shared, not copied
    assert apply_lmini_kernels_to_llava_mini(model) is handle  # idempotent
    revert_lmini_kernels(model)
    assert model.get_model().compressor is original
    assert not {"encode_images_mini", "prepare_inputs_labels_for_multimodal", "_lmini_kernels_patch"} & set(
        model.__dict__
    )
    assert torch.equal(logits(model, ids, mask, images).logits, before)
    with pytest.raises(ValueError, match="not patched"):
        revert_lmini_kernels(model)
    handle.revert()  # idempotent


def test_other_instances_are_not_patched():
    a, b = build_standin(seed=27), build_standin(seed=27)
    apply_lmini_kernels_to_llava_mini(a)
    assert "encode_images_mini" not in b.__dict__
    assert not isinstance(b.get_model().compressor, lmini_kernels.FusedResampler)


# ------------------------------------------------------------------------------ refused models
def _without(attr):
    def edit(model):
        delattr(model.get_model(), attr)

    return edit


@pytest.mark.parametrize(
    ("edit", "piece"),
    [
        (_without("compressor"), "get_model().compressor"),
        (_without("prefusion_layers"), "get_model().prefusion_layers"),
        (lambda m: setattr(m.get_model(), "mm_projector", torch.nn.Conv1d(32, 64, 1)), "mm_projector"),
        (lambda m: setattr(m.get_model().vision_tower, "select_feature", "cls_patch"), "select_feature"),
        (lambda m: m.get_model().vision_tower.config.__setattr__("hidden_size", 48), "hidden_size"),
        (lambda m: setattr(m.get_model().vision_tower, "vision_tower", None) or setattr(
            m.get_model(), "vision_tower", None), "get_vision_tower()"),
        (lambda m: setattr(m.get_model().prefusion_layers[1].self_attn.q_proj, "bias",
                           torch.nn.Parameter(torch.zeros(64))), "prefusion_layers[1]"),
        (lambda m: m.config.__setattr__("hidden_act", "gelu"), "hidden_act"),
    ],
)  # fmt: skip
def test_unsupported_models_are_refused_by_name(edit, piece):
    model = build_standin(seed=28)
    edit(model)
    compressor = getattr(model.get_model(), "compressor", None)
    with pytest.raises(UnsupportedModelError, match=f"StandinLlavaMiniForCausalLM.*{re.escape(piece)}"):
        apply_lmini_kernels_to_llava_mini(model)
    assert getattr(model.get_model(), "compressor", None) is compressor
    assert "_lmini_kernels_patch" not in model.__dict__
    report = apply_lmini_kernels(model)  # the entry point reports instead of raising
    assert report.kind == "official LLaVA-Mini" and not report.patched and piece in str(report)


def test_not_a_llava_mini_is_refused():
    with pytest.raises(UnsupportedModelError, match="Linear"):
        apply_lmini_kernels_to_llava_mini(torch.nn.Linear(2, 2))


def test_failure_mid_way_rolls_back(monkeypatch):
    model = build_standin(seed=29)
    ids, mask, images = make_inputs(model, batch=1, length=8, seed=30)
    original = model.get_model().compressor
    before = logits(model, ids, mask, images).logits

    def boom(m):
        assert isinstance(m.get_model().compressor, lmini_kernels.FusedResampler)  # truly mid-way
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        apply_lmini_kernels_to_llava_mini(model, _steps=(boom,))
    assert model.get_model().compressor is original and "_lmini_kernels_patch" not in model.__dict__

    def refuse(*a, **k):
        raise ValueError("layers: injected")

    monkeypatch.setattr(official.FusedPreFusion, "from_layers", refuse)
    with pytest.raises(ValueError, match="injected"):
        apply_lmini_kernels_to_llava_mini(model)
    assert model.get_model().compressor is original and "encode_images_mini" not in model.__dict__
    assert torch.equal(logits(model, ids, mask, images).logits, before)


def test_bad_options():
    model = build_standin(seed=31)
    with pytest.raises(ValueError, match="prefix_cache_size"):
        apply_lmini_kernels_to_llava_mini(model, prefix_cache_size=-1)
    with pytest.raises(ValueError, match="video_chunk_frames"):
        apply_lmini_kernels_to_llava_mini(model, video_chunk_frames=0)


# ------------------------------------------------------------------------------ the entry point
def test_entry_point_official():
    model = build_standin(seed=32)
    ids, mask, images = make_inputs(model, batch=2, length=9, seed=33)
    ref = logits(model, ids, mask, images).logits
    report = apply_lmini_kernels(model)
    assert report.kind == "official LLaVA-Mini" and len(report.patched) == 2
    assert isinstance(model.__dict__["_lmini_kernels_patch"], LlavaMiniPatch)
    assert rel_error(logits(model, ids, mask, images).logits, ref) <= TOL
    assert "LLM attention" in str(report)
    report.revert()
    assert "_lmini_kernels_patch" not in model.__dict__ and torch.equal(logits(model, ids, mask, images).logits, ref)


def test_entry_point_hf_model():
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2, vocab_size=64, attn_implementation="sdpa")  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ref = model(ids).logits
        report = apply_lmini_kernels(model)
        assert report.kind == "Hugging Face model" and model.config._attn_implementation == "lmini"
        assert rel_error(model(ids).logits, ref) <= TOL
        report.revert()
        assert model.config._attn_implementation == "sdpa"


def test_entry_point_reference_model_and_unknown():
    from llava_mini import LlavaMini, LlavaMiniConfig

    reference = LlavaMini(LlavaMiniConfig.from_name("tiny"))
    report = apply_lmini_kernels(reference)
    assert report.kind == "reference LLaVA-Mini" and not report.patched and "nothing to patch" in str(report)
    report = apply_lmini_kernels(torch.nn.Linear(2, 2))
    assert report.kind == "unknown" and not report.patched


def test_left_padded_input_matches_official():
    # left-padded input_ids: the official splice takes the placeholder's index among the kept
    # positions but slices the text features of all positions; the patch does the same
    model = build_standin(seed=34, padding_side="left")
    ids, mask, images = make_inputs(model, batch=3, length=12, seed=35, pad=False)
    for b, n in ((1, 2), (2, 4)):
        ids[b] = torch.cat([torch.zeros(n, dtype=ids.dtype), ids[b, : 12 - n]])
        mask[b, :n] = False
    check_same(model, ids, mask, images, tokens=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_worse_than_official(dtype):
    # both paths round differently in 16 bits: each is compared with the float32 model
    model = build_standin(seed=36)
    ids, mask, images = make_inputs(model, batch=2, length=10, seed=37)
    exact = logits(model, ids, mask, images).logits
    model.to(dtype)
    official_err = rel_error(logits(model, ids, mask, images.to(dtype)).logits, exact)
    apply_lmini_kernels_to_llava_mini(model)
    patched_err = rel_error(logits(model, ids, mask, images.to(dtype)).logits, exact)
    assert official_err < 0.05 and patched_err <= 1.5 * official_err


def test_cast_after_patch_keeps_sharing():
    # model.half() after the patch: the shared parameters follow, the frozen fold is recomputed
    model = build_standin(seed=38)
    ids, mask, images = make_inputs(model, batch=2, length=10, seed=39)
    handle = apply_lmini_kernels_to_llava_mini(model)
    logits(model, ids, mask, images)
    model.half()
    out = logits(model, ids, mask, images.half()).logits
    assert handle.compressor.query.dtype == torch.float16
    handle.revert()
    assert rel_error(out, logits(model, ids, mask, images.half()).logits) <= 5e-3


def test_sample_without_placeholder_and_truncation_match_official():
    # a sample with no placeholder still consumes an image slot; sequences are cut to
    # config.tokenizer_model_max_length before padding
    model = build_standin(seed=44)
    ids, mask, images = make_inputs(model, batch=3, length=10, seed=45)
    ids[1][ids[1] == IMAGE_TOKEN_INDEX] = 5
    check_same(model, ids, mask, images, tokens=False)
    model.__dict__["_lmini_kernels_patch"].revert()
    model.config.tokenizer_model_max_length = 7
    with torch.no_grad():
        ref = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, images)
        apply_lmini_kernels_to_llava_mini(model)
        out = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, None, images)
    assert out[4].shape == ref[4].shape == (3, 7, model.config.hidden_size)
    assert torch.equal(out[2], ref[2]) and torch.equal(out[5], ref[5]) and rel_error(out[4], ref[4]) <= TOL
