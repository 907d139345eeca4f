"""The FLOPs suite: the paper's totals reproduced, and the counts against an independent
closed form (2 x parameters x tokens) built from the config alone."""

from __future__ import annotations

import json

import pytest

from lmini_tools.profiling import flops
from lmini_tools.profiling.cli import main as profile_main

CASES = {c.name: c for c in flops.MODEL_CASES + flops.ABLATION_CASES}


def _count(name: str, convention: str = "paper", text_tokens: int = 43) -> dict[str, int]:
    return flops.count_case(CASES[name], convention, text_tokens).flops


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _llm_params(cfg) -> int:
    """Weight-matmul parameters of the LLaMA body plus lm_head (embeddings are lookups)."""
    t = cfg.text
    kv = t.num_kv_heads * t.head_dim
    layer = 2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size
    return t.num_layers * layer, t.vocab_size * t.hidden_size, layer


def test_paper_totals_reproduced_within_1_percent():
    v15, mini, hi = _count("llava-v1.5-7b"), _count("llava-mini-vicuna-7b"), _count("llava-v1.5-7b@672")
    assert _rel(v15["total"] / 1e12, 8.55) < 0.01
    assert _rel(mini["total"] / 1e12, 1.96) < 0.01
    assert _rel(hi["total"] / 1e12, 40.49) < 0.01
    assert _rel(flops.reduction(mini["total"], v15["total"]), 0.771) < 0.01
    # the components the paper gets right
    assert _rel(v15["vit"] / 1e12, 0.349) < 0.01
    assert _rel(v15["projector"] / 1e12, 0.024) < 0.02
    assert _rel(v15["llm"] / 1e12, 8.177) < 0.01
    assert _rel(hi["llm"] / 1e12, 38.623) < 0.01
    assert _rel(mini["compression"] / 1e9, 2.42) < 0.01  # llava-mini.md: about 2.42 GFLOPs


def test_paper_convention_is_two_params_tokens():
    """Independent closed form from the config: every component, exact."""
    from llava_mini import LlavaMiniConfig

    n_text = 43
    cfg = LlavaMiniConfig.from_name("llava-mini-vicuna-7b")
    v, t = cfg.vision, cfg.text
    body, head, layer = _llm_params(cfg)
    vit_layer = 4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size
    patch = v.num_channels * v.patch_size**2 * v.hidden_size
    n = v.num_patches
    expect = {
        # official: all 24 CLIP layers over CLS + patches, the conv over the patches
        "vit": 2 * (v.num_layers * vit_layer * (n + 1) + patch * n),
        "projector": 2 * (v.hidden_size * t.hidden_size + t.hidden_size**2) * (n + 1),
        # k, v projections of N tokens + q and out projections of the one query
        "compression": 2 * v.hidden_size**2 * (2 * n + 2),
        # 576 + 1 + text + the placeholder row
        "prefusion": 2 * cfg.prefusion_layers * layer * (n + 1 + n_text + 1),
        "llm": 2 * (body + head) * (1 + n_text),
    }
    got = _count("llava-mini-vicuna-7b", text_tokens=n_text)
    for k, want in expect.items():
        assert got[k] == want, k
    assert got["total"] == sum(expect.values())


def test_text_tokens_changes_only_text_dependent_parts():
    a, b = _count("llava-v1.5-7b", text_tokens=43), _count("llava-v1.5-7b", text_tokens=100)
    from llava_mini import LlavaMiniConfig

    body, head, _ = _llm_params(LlavaMiniConfig.from_name("llava-v1.5-7b"))
    assert b["vit"] == a["vit"] and b["projector"] == a["projector"]
    assert b["llm"] - a["llm"] == 2 * (body + head) * 57


def test_full_convention_adds_attention():
    """full - paper in the LLM = the SDPA score and weighted-sum products (4 x S^2 x d per head
    and layer, FlopCounterMode counts the masked square)."""
    from llava_mini import LlavaMiniConfig

    t = LlavaMiniConfig.from_name("llava-v1.5-7b").text
    paper, full = _count("llava-v1.5-7b"), _count("llava-v1.5-7b", "full")
    s = 576 + 43
    assert full["llm"] - paper["llm"] == t.num_layers * 4 * s * s * t.hidden_size
    assert full["vit"] > paper["vit"] and full["total"] > paper["total"]


def test_ablations_match_the_paper():
    for name, paper_total in flops.PAPER_ABLATION_TOTALS.items():
        got = _count(name)["total"] / 1e12
        want = 1.71 if name == "prefusion-3" else paper_total  # the paper's 1.81 is a typo (0.25 T a layer)
        assert _rel(got, want) < 0.01, (name, got, want)


def test_hd_and_our_pipelines():
    hd = _count("llava-mini-hd-vicuna-7b")
    assert _rel(hd["total"] / 1e12, 8.13) < 0.01  # section 5.2; table 14's 7.19 disagrees
    fused, mini = _count("llava-mini-vicuna-7b-fused"), _count("llava-mini-vicuna-7b")
    assert _rel(fused["prefusion"] / 1e12, 0.81) < 0.01  # performance.md: 1.00 -> 0.81 T
    assert fused["compression"] < mini["compression"] / 100  # folded: one pass, no K/V projections
    assert fused["vit"] < mini["vit"]  # the unused last CLIP layer is skipped
    assert fused["llm"] == mini["llm"]
    follow = _count("llava-mini-vicuna-7b-followup")
    assert follow["vit"] == follow["projector"] == follow["compression"] == 0
    assert _rel(follow["prefusion"] / 1e12, 0.07) < 0.03  # about 0.07 T of pre-fusion


def test_gqa_model_counts_fewer_kv_parameters():
    llama3, vicuna = _count("llava-mini-llama3.1-8b"), _count("llava-mini-vicuna-7b")
    from llava_mini import LlavaMiniConfig

    body, head, _ = _llm_params(LlavaMiniConfig.from_name("llava-mini-llama3.1-8b"))
    assert llama3["llm"] == 2 * (body + head) * 44
    assert llama3["vit"] == vicuna["vit"]


def test_bad_arguments_are_named():
    case = CASES["llava-v1.5-7b"]
    with pytest.raises(ValueError, match="convention"):
        flops.count_case(case, "calflops")
    with pytest.raises(ValueError, match="text_tokens"):
        flops.count_case(case, "paper", 0)
    with pytest.raises(SystemExit):
        profile_main(["flops", "--convention", "calflops"])
    with pytest.raises(SystemExit):
        profile_main(["flops", "--text-tokens", "0"])


def test_cli_json_and_table(capsys):
    assert profile_main(["flops", "--json", "--no-ablations"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["convention"] == "paper" and doc["text_tokens"] == 43
    assert set(doc["models"]) == {c.name for c in flops.MODEL_CASES}
    for f in doc["models"].values():
        assert set(f) == {*flops.COMPONENTS, "total"}
        assert sum(f[c] for c in flops.COMPONENTS) == f["total"]
    assert doc["reduction"]["llava-v1.5-7b"] == 0.0
    assert _rel(doc["reduction"]["llava-mini-vicuna-7b"], 0.771) < 0.01
    table = flops.format_table(doc)
    assert "8.553" in table and "(8.55)" in table and "7.19" in table and "8.13" in table


def test_fused_prefusion_closed_form():
    """FusedPreFusion: layers 1..3 over all 621 rows; the last layer K/V over all rows and
    Q/O/MLP over the 45 kept rows; the follow-up runs only the 44 text rows in every layer."""
    from llava_mini import LlavaMiniConfig

    t = LlavaMiniConfig.from_name("llava-mini-vicuna-7b").text
    d, m = t.hidden_size, t.intermediate_size
    kv, q_o_mlp = 2 * d * d, 2 * d * d + 3 * d * m
    rows, kept, text = 576 + 1 + 44, 1 + 44, 44
    fused = _count("llava-mini-vicuna-7b-fused")["prefusion"]
    assert fused == 2 * (3 * (kv + q_o_mlp) * rows + kv * rows + q_o_mlp * kept)
    follow = _count("llava-mini-vicuna-7b-followup")["prefusion"]
    assert follow == 2 * 4 * (kv + q_o_mlp) * text


def test_lmini_profile_entry_point(capsys):
    """`lmini profile flops ...` reaches this suite through the top-level CLI."""
    from lmini_tools.cli import main as lmini_main

    assert lmini_main(["profile", "flops", "--json", "--no-ablations", "--text-tokens", "10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["text_tokens"] == 10 and "llava-mini-vicuna-7b-fused" in doc["models"]
