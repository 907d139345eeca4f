"""Configs and model inputs are validated before anything is built or run: each problem is one
ValueError (TypeError for a dtype) whose message names the field or argument and its value."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from conftest import build, make_ids

from llava_mini import IMAGE_TOKEN_INDEX, LlavaMiniConfig
from llava_mini.config import TINY_TEXT, TINY_VISION, RopeScaling, TextConfig

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_size", 0), ("patch_size", -7), ("hidden_size", 0), ("num_layers", 0), ("num_heads", 0),
     ("num_channels", 0), ("layer_norm_eps", 0.0), ("layer_norm_eps", NAN), ("image_size", 30),
     ("num_heads", 5), ("select_layer", 4), ("select_layer", -5), ("image_size", 28.0), ("num_layers", True)],
)  # fmt: skip
def test_vision_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"vision.{field}|vision.hidden_size|vision.image_size"):
        dataclasses.replace(TINY_VISION, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("vocab_size", 0), ("hidden_size", -64), ("intermediate_size", 0), ("num_layers", 0), ("num_heads", 0),
     ("num_kv_heads", 0), ("num_kv_heads", 3), ("rope_theta", 0.0), ("rope_theta", -1.0), ("rope_theta", NAN),
     ("rope_theta", INF), ("rms_norm_eps", 0.0), ("rms_norm_eps", -1e-6), ("max_position_embeddings", 0),
     ("pad_token_id", -1), ("pad_token_id", 128), ("num_heads", 5), ("rope_scaling", {"factor": 8.0})],
)  # fmt: skip
def test_text_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"text.{field}|text.hidden_size|text.num_heads"):
        dataclasses.replace(TINY_TEXT, **{field: value})


def test_odd_head_dim_is_refused() -> None:
    with pytest.raises(ValueError, match="head_dim 9 must be even"):
        TextConfig(vocab_size=10, hidden_size=36, intermediate_size=8, num_layers=1, num_heads=4, num_kv_heads=4)


@pytest.mark.parametrize(
    ("field", "value"),
    [("factor", 0.0), ("low_freq_factor", -1.0), ("high_freq_factor", 1.0), ("original_max_position_embeddings", 0)],
)
def test_rope_scaling_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"rope_scaling.{field}"):
        dataclasses.replace(RopeScaling(), **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("compressor_size", 0), ("compressor_heads", 0), ("compressor_heads", 5), ("prefusion_layers", -1),
     ("resolution_ratio", 0), ("resolution_ratio", 1.5), ("projector_type", "linear3"), ("vision", None)],
)  # fmt: skip
def test_model_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LlavaMiniConfig.from_name("tiny").replace(**{field: value})


def test_baseline_fields() -> None:
    base = LlavaMiniConfig.from_name("tiny-baseline")
    with pytest.raises(ValueError, match="resolution_ratio"):
        base.replace(resolution_ratio=2)
    with pytest.raises(ValueError, match="prefusion_layers"):
        base.replace(prefusion_layers=2)


def _hf() -> dict:
    return {
        "architectures": ["LlavaMiniLlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "rope_theta": 10000.0,
        "compressor_size": 1,
        "prefusion_layer_num": 2,
    }


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"])
def test_hf_missing_field_is_named(field: str) -> None:
    hf = _hf()
    del hf[field]
    with pytest.raises(ValueError, match=f"missing required field.*{field}"):
        LlavaMiniConfig.from_hf_config(hf)


@pytest.mark.parametrize(
    ("over", "words"),
    [({"rope_theta": 0}, "text.rope_theta"), ({"rope_theta": -10000.0}, "text.rope_theta"),
     ({"num_attention_heads": 0}, "text.num_heads"), ({"rms_norm_eps": "1e-6"}, "text.rms_norm_eps"),
     ({"prefusion_layer_num": -1}, "prefusion_layers"), ({"resolution_ratio": -1}, "resolution_ratio"),
     ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling: missing field"),
     ({"rope_scaling": [1]}, "rope_scaling"), ({"mm_vision_tower": "siglip-so400m"}, "mm_vision_tower"),
     ({"mm_hidden_size": 1152}, "mm_hidden_size")],
)  # fmt: skip
def test_hf_bad_values_are_named(over: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        LlavaMiniConfig.from_hf_config({**_hf(), **over})


def test_hf_unknown_fields_are_named_in_one_warning() -> None:
    with pytest.warns(UserWarning, match="compresor_size, frobnicate"):
        LlavaMiniConfig.from_hf_config({**_hf(), "frobnicate": 1, "compresor_size": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LlavaMiniConfig.from_hf_config({**_hf(), "torch_dtype": "float16", "tokenizer_model_max_length": 2048})


# ----------------------------------------------------------------------------- model inputs
def _inputs(gen: torch.Generator, name: str = "tiny", batch: int = 2):
    model = build(name)
    cfg = model.config
    ids = make_ids(gen, batch, 6, cfg.text.vocab_size)
    images = torch.randn(batch, cfg.image_parts, 3, 28, 28, generator=gen)
    return model, ids, images


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (lambda ids, im, m: (ids, im, torch.zeros_like(ids, dtype=torch.bool)), ValueError, "attention_mask: sample 0"),
        (lambda ids, im, m: (ids, im, torch.ones(2, 5, dtype=torch.bool)), ValueError, "attention_mask: expected"),
        (lambda ids, im, m: (ids.index_fill(1, torch.tensor([4]), 128), im, None), ValueError, "id 128"),
        (lambda ids, im, m: (ids.index_fill(1, torch.tensor([4]), -1), im, None), ValueError, "id -1"),
        (lambda ids, im, m: (ids.float(), im, None), TypeError, "input_ids: expected an integer"),
        (lambda ids, im, m: (ids[0], im, None), ValueError, "input_ids: expected a \\(B, L\\)"),
        (lambda ids, im, m: (ids, im[..., :27], None), ValueError, "3 x 28 x 28"),
        (lambda ids, im, m: (ids, im[:, :, :1], None), ValueError, "3 x 28 x 28"),
        (lambda ids, im, m: (ids, im[:1], None), ValueError, "images: batch 1"),
        (lambda ids, im, m: (ids, im.expand(2, 5, 3, 28, 28), None), ValueError, "5 view"),
        (lambda ids, im, m: (ids, (im * 255).to(torch.uint8), None), TypeError, "floating-point pixels"),
        (lambda ids, im, m: (ids, im.index_fill(-1, torch.tensor([3]), math.nan), None), ValueError, "NaN or inf"),
        (lambda ids, im, m: (ids, im[:, None, :, :, :, :][:, :0], None), ValueError, "at least one frame"),
        (lambda ids, im, m: (ids, im[0, 0], None), ValueError, "4-, 5- or 6-D"),
    ],
)
def test_bad_model_inputs_are_named(gen: torch.Generator, edit, error, words: str) -> None:
    model, ids, images = _inputs(gen)
    ids, images, mask = edit(ids, images, model)
    with pytest.raises(error, match=words):
        model(ids, images, mask)
    with pytest.raises(error, match=words):
        model.generate(ids, images, mask, max_new_tokens=2)


def test_hd_model_refuses_one_view(gen: torch.Generator) -> None:
    model, ids, images = _inputs(gen, "tiny-hd")
    with pytest.raises(ValueError, match="1 view.*takes 5"):
        model(ids, images[:, -1])


def test_placeholder_ids_and_padding_are_accepted(gen: torch.Generator) -> None:
    model, ids, images = _inputs(gen)
    ids[1, -2:] = 0
    assert (ids == IMAGE_TOKEN_INDEX).any()
    with torch.no_grad():
        assert torch.isfinite(model(ids, images)).all()


def test_generate_lengths(gen: torch.Generator) -> None:
    model, ids, images = _inputs(gen)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate(ids, images, max_new_tokens=bad)
    assert model.generate(ids, images, max_new_tokens=0).shape == (2, 0)
    limit = model.config.text.max_position_embeddings
    spliced = 6 - 1 + model.config.llm_tokens_per_image
    assert model.generate(ids, images, max_new_tokens=limit - spliced).shape[1] >= 1
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model.generate(ids, images, max_new_tokens=limit - spliced + 1)
