"""Configs, meta-device 7B/8B builds, parameter counts and official key names."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from llava_mini import LlavaMini, LlavaMiniConfig, num_parameters

REAL = ["llava-v1.5-7b", "llava-mini-vicuna-7b", "llava-mini-hd-vicuna-7b", "llava-mini-llama3.1-8b"]


def test_names_and_unknown() -> None:
    names = LlavaMiniConfig.names()
    for n in ["tiny", *REAL]:
        assert n in names
        assert LlavaMiniConfig.from_name(n).name == n
    with pytest.raises(ValueError, match="unknown config"):
        LlavaMiniConfig.from_name("llava-13b")


def test_real_numbers() -> None:
    base = LlavaMiniConfig.from_name("llava-v1.5-7b")
    mini = LlavaMiniConfig.from_name("llava-mini-vicuna-7b")
    hd = LlavaMiniConfig.from_name("llava-mini-hd-vicuna-7b")
    l3 = LlavaMiniConfig.from_name("llava-mini-llama3.1-8b")
    assert base.vision.grid_size == 24 and base.vision.num_patches == 576
    assert base.vision.num_layers_used == 23  # hidden_states[-2] of 24 layers
    assert not base.is_mini and base.llm_tokens_per_image == 576
    assert mini.is_mini and mini.num_queries == 1 and mini.llm_tokens_per_image == 1
    assert mini.prefusion_layers == 4 and mini.compressor_heads == 8
    assert hd.num_queries == 64 and hd.image_parts == 5 and hd.compressor_grid == 48
    assert hd.prefusion_vision_tokens == 2304 + 576
    assert l3.text.num_kv_heads == 8 and l3.text.vocab_size == 128256 and l3.text.rope_scaling is not None
    assert LlavaMini.llm_vision_tokens(mini, frames=16) == 16


@pytest.mark.parametrize(
    "name, expected_billions, tol",
    [
        ("llava-v1.5-7b", 7.06, 0.01),
        ("llava-mini-vicuna-7b", 7.88, 0.01),
        ("llava-mini-hd-vicuna-7b", 7.88, 0.01),
        ("llava-mini-llama3.1-8b", 9.23, 0.01),
    ],
)
def test_meta_build_parameter_counts(name: str, expected_billions: float, tol: float) -> None:
    cfg = LlavaMiniConfig.from_name(name)
    with torch.device("meta"):
        model = LlavaMini(cfg)
    assert all(p.is_meta for p in model.parameters())
    total = num_parameters(model)
    assert abs(total / 1e9 - expected_billions) < tol, total
    # component breakdown, computed by hand from the public shapes
    clip = num_parameters(model.model.vision_tower)
    assert clip == 303_507_456  # CLIP ViT-L/14-336 vision model
    assert num_parameters(model.model.mm_projector) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    if cfg.is_mini:
        q = cfg.num_queries
        assert num_parameters(model.model.compressor) == 2 * q * 1024 + 4 * 1024 + 4 * 1024 * 1024 + 4 * 1024
        t = cfg.text
        kv = t.num_kv_heads * t.head_dim
        per_layer = 2 * t.hidden_size**2 + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size
        per_layer += 2 * t.hidden_size
        assert num_parameters(model.model.prefusion_layers) == 4 * per_layer
    else:
        assert not hasattr(model.model, "compressor") and not hasattr(model.model, "prefusion_layers")


def test_official_key_names() -> None:
    keys = set(build("tiny-hd").state_dict())
    expected = {
        "model.compressor.query",
        "model.compressor.pos_embed",
        "model.compressor.ln_q.weight",
        "model.compressor.ln_kv.bias",
        "model.compressor.attn.in_proj_weight",
        "model.compressor.attn.in_proj_bias",
        "model.compressor.attn.out_proj.weight",
        "model.compressor.attn.out_proj.bias",
        "model.prefusion_layers.1.self_attn.q_proj.weight",
        "model.prefusion_layers.0.mlp.gate_proj.weight",
        "model.prefusion_layers.0.post_attention_layernorm.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.bias",
        "model.vision_tower.vision_tower.vision_model.embeddings.class_embedding",
        "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight",
        "model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight",
        "model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.2.self_attn.out_proj.bias",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.layer_norm2.weight",
        "model.vision_tower.vision_tower.vision_model.post_layernorm.bias",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    }
    assert expected <= keys, expected - keys
    prefixes = (
        "model.compressor.",
        "model.prefusion_layers.",
        "model.mm_projector.",
        "model.vision_tower.vision_tower.vision_model.",
        "model.layers.",
        "model.embed_tokens.",
        "model.norm.",
        "lm_head.",
    )
    assert all(k.startswith(prefixes) for k in keys), sorted(k for k in keys if not k.startswith(prefixes))
    assert not any("kv_proj" in k or "inv_freq" in k for k in keys)
    base = set(build("tiny-baseline").state_dict())
    assert not any(k.startswith(("model.compressor.", "model.prefusion_layers.")) for k in base)


def test_stage_attribute_names() -> None:
    m = build("tiny")
    for attr in ["vision_tower", "mm_projector", "compressor", "prefusion_layers", "layers", "embed_tokens", "norm"]:
        assert hasattr(m.model, attr)
    assert isinstance(m.lm_head, torch.nn.Linear)


def test_from_hf_config_reads_official_fields() -> None:
    hf = {  # the fields of a LLaVA-Mini LLaMA-3.1-8B config.json that matter here
        "architectures": ["LlavaMiniLlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_select_layer": -2,
        "mm_hidden_size": 1024,
        "mm_projector_type": "mlp2x_gelu",
        "compressor_size": 1,
        "prefusion_layer_num": 4,
    }
    cfg = LlavaMiniConfig.from_hf_config(hf)
    named = LlavaMiniConfig.from_name("llava-mini-llama3.1-8b")
    assert cfg.text == named.text and cfg.vision == named.vision
    assert cfg.num_queries == 1 and cfg.prefusion_layers == 4 and cfg.is_mini
    base = {k: v for k, v in hf.items() if k not in ("compressor_size", "prefusion_layer_num")}
    assert not LlavaMiniConfig.from_hf_config(base).is_mini
    with pytest.raises(ValueError, match="rope_scaling"):
        LlavaMiniConfig.from_hf_config({**hf, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
