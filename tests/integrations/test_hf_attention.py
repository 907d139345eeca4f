"""attn_implementation="lmini" (lmini_kernels.integrations) against transformers' own SDPA.

Tiny Llama and Qwen2 decoders built from configs (no hub), the same weights under "sdpa" and
"lmini": logits, greedy generation with the KV cache, left and right padding, a cached
multi-token continuation (the op's suffix shape), fp16/bf16, AdamW steps, and the SDPA
fallback for what the op does not serve.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen2Config
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from utils import rel_error

from lmini_kernels.integrations import hf_attention, register_hf_attention

VOCAB = 128
# initializer_range 0.2 (not the default 0.02) spreads the logits, so greedy ties are rare
COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    initializer_range=0.2,
    pad_token_id=0,
)
CONFIGS = {
    "llama": lambda **kw: LlamaConfig(**{**COMMON, "num_hidden_layers": 2, **kw}),
    "qwen2": lambda **kw: Qwen2Config(**{**COMMON, "num_hidden_layers": 3, **kw}),
}


@pytest.fixture(autouse=True)
def _registered_and_fresh_warnings():
    assert register_hf_attention() == "lmini"
    hf_attention._warned.clear()
    yield


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls that reach prefusion_attention (so a silent fallback everywhere fails)."""
    calls = []
    real = hf_attention.prefusion_attention

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_attention, "prefusion_attention", counted)
    return calls


def model_pair(family: str, dtype: torch.dtype = torch.float32, **config_kw):
    """(sdpa model, lmini model) with the same fresh random weights, eval mode."""
    sdpa = AutoModelForCausalLM.from_config(CONFIGS[family](**config_kw), attn_implementation="sdpa")
    lmini = AutoModelForCausalLM.from_config(CONFIGS[family](**config_kw), attn_implementation="lmini")
    lmini.load_state_dict(sdpa.state_dict())
    assert lmini.config._attn_implementation == "lmini"
    return sdpa.to(dtype).eval(), lmini.to(dtype).eval()


def padded_batch(lengths: list[int], side: str, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, total) and the 0/1 attention mask of sequences of ``lengths`` tokens."""
    ids = torch.randint(1, VOCAB, (len(lengths), total))
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, total - n :] = 1
        else:
            mask[b, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def assert_rows_close(out: torch.Tensor, ref: torch.Tensor, tol: float, rows: torch.Tensor | None = None) -> None:
    """Every row (last dim) of ``out`` within relative norm ``tol`` of ``ref``'s; ``rows``: a
    bool mask over the leading dims selecting the rows compared."""
    out, ref = out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
    if rows is not None:
        keep = rows.reshape(-1)
        out, ref = out[keep], ref[keep]
    assert out.shape[0] > 0
    errs = torch.tensor([rel_error(o, r) for o, r in zip(out, ref, strict=True)])
    assert errs.max() <= tol, f"worst row relative error {errs.max():.3e} > {tol:.1e} (median {errs.median():.1e})"


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_prefill_logits_fp32(family, op_calls):
    sdpa, lmini = model_pair(family)
    ids = torch.randint(0, VOCAB, (3, 19))
    with torch.no_grad():
        assert_rows_close(lmini(ids).logits, sdpa(ids).logits, 1e-5)
    assert len(op_calls) == lmini.config.num_hidden_layers
    assert all(c["causal"] and c["key_padding_mask"] is None for c in op_calls)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_logits(family, side, op_calls):
    sdpa, lmini = model_pair(family)
    ids, mask = padded_batch([13, 5, 9], side, 13)
    with torch.no_grad():
        out = lmini(ids, attention_mask=mask).logits
        ref = sdpa(ids, attention_mask=mask).logits
    assert_rows_close(out, ref, 1e-5, rows=mask.bool())
    assert len(op_calls) == lmini.config.num_hidden_layers and not hf_attention._warned
    assert all(c["key_padding_mask"] is not None for c in op_calls)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cached_continuation_is_a_suffix_over_the_prefix(family, op_calls):
    """A prompt, then 6 more tokens at once over its KV cache (left padding): Lq=6 < Lk=17."""
    sdpa, lmini = model_pair(family)
    ids, mask = padded_batch([11, 7], "left", 11)
    more = torch.randint(1, VOCAB, (2, 6))
    full_mask = torch.cat([mask, torch.ones_like(more)], dim=1)
    logits = []
    with torch.no_grad():
        for model in (lmini, sdpa):
            cache = DynamicCache(config=model.config)
            model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            logits.append(model(more, attention_mask=full_mask, past_key_values=cache, use_cache=True).logits)
    assert_rows_close(logits[0], logits[1], 1e-5)
    suffix = [c for c in op_calls if c["key_padding_mask"] is not None and c["key_padding_mask"].shape[1] == 17]
    assert len(suffix) == lmini.config.num_hidden_layers and all(c["causal"] for c in suffix)
    assert not hf_attention._warned


def greedy(model, ids, mask, steps, cache):
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=steps,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        cache_implementation=cache,
    )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, dim=1)  # (B, steps), (B, steps, V)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("side", ["left", "none"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generate_with_kv_cache(family, side, cache, op_calls):
    """Same tokens as SDPA; the scores of every step agree until a (float-rounding) tie. A
    static cache hands the attention every slot, the unwritten ones masked."""
    sdpa, lmini = model_pair(family)
    ids, mask = padded_batch([9, 4, 6], "left", 9) if side == "left" else padded_batch([9, 9], "left", 9)
    with torch.no_grad():
        tok, scores = greedy(lmini, ids, mask, 6, cache)
        tok_ref, scores_ref = greedy(sdpa, ids, mask, 6, cache)
    for b in range(ids.shape[0]):
        differ = (tok[b] != tok_ref[b]).nonzero()
        n = int(differ[0]) if len(differ) else tok.shape[1]
        assert_rows_close(scores[b, : n + (n < tok.shape[1])], scores_ref[b, : n + (n < tok.shape[1])], 1e-5)
        if n < tok.shape[1]:  # only a tie may change a token
            s = scores_ref[b, n]
            assert abs(s[tok[b, n]] - s[tok_ref[b, n]]) < 1e-4, f"row {b}: step {n} picks another token"
    # every layer of every step: the prompt, then one query over the cache per new token
    assert len(op_calls) == tok.shape[1] * lmini.config.num_hidden_layers and not hf_attention._warned


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("side", ["left", "right"])
def test_half_precision_logits(dtype, side, op_calls):
    """fp16/bf16: per row, lmini's error against the fp32 model is within twice SDPA's own."""
    sdpa32, _ = model_pair("llama")
    sdpa, lmini = model_pair("llama", dtype)
    lmini.load_state_dict(sdpa32.state_dict())
    sdpa.load_state_dict(sdpa32.state_dict())
    ids, mask = padded_batch([15, 8, 12], side, 15)
    with torch.no_grad():
        ref = sdpa32(ids, attention_mask=mask).logits
        out = lmini(ids, attention_mask=mask).logits.float()
        base = sdpa(ids, attention_mask=mask).logits.float()
    assert out.dtype == ref.dtype and len(op_calls) == lmini.config.num_hidden_layers and not hf_attention._warned
    keep = mask.bool().reshape(-1)
    rows = (t.reshape(-1, VOCAB)[keep] for t in (out, base, ref))
    for o, s, r in zip(*rows, strict=True):
        err, err_sdpa = rel_error(o, r), rel_error(s, r)
        assert err <= 2 * err_sdpa + {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype], (err, err_sdpa)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_adamw_steps_same_losses(family, op_calls):
    """Four AdamW steps: at every step both models hold the same weights (the SDPA model's
    update is copied over, so Adam's normalisation cannot amplify rounding into a chaotic
    trajectory) and give the same loss and gradients."""
    sdpa, lmini = model_pair(family)
    ids, mask = padded_batch([14, 10], "right", 14)
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(sdpa.parameters(), lr=1e-2)
    sdpa.train()
    lmini.train()
    losses = []
    for _ in range(4):
        lmini.load_state_dict(sdpa.state_dict())
        out = []
        for model in (lmini, sdpa):
            model.zero_grad()
            loss = model(ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            out.append(loss.item())
        assert out[0] == pytest.approx(out[1], rel=1e-5), out
        for (name, p), q in zip(lmini.named_parameters(), sdpa.parameters(), strict=True):
            if q.grad is not None:
                assert rel_error(p.grad, q.grad) <= 1e-4, name
        opt.step()
        losses.append(out[1])
    assert losses[-1] < losses[0]  # it learns
    assert len(op_calls) == 4 * lmini.config.num_hidden_layers and not hf_attention._warned


def test_sliding_window_falls_back_to_sdpa_once(caplog, op_calls):
    """Qwen2 with a window of 4 (all layers sliding) on 12 tokens: the mask cuts keys the op
    would see, so every layer takes SDPA; one warning for all layers and both calls."""
    sdpa, lmini = model_pair("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert set(lmini.config.layer_types) == {"sliding_attention"}
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger=hf_attention.__name__):
        out = lmini(ids).logits
        out2 = lmini(ids).logits
        ref = sdpa(ids).logits
    assert torch.equal(out, ref) and torch.equal(out2, ref)
    warnings = [r for r in caplog.records if r.name == hf_attention.__name__]
    assert len(warnings) == 1 and "sliding window of 4" in warnings[0].getMessage()
    assert op_calls == []


def attention_inputs(b=2, h=4, hkv=2, lq=7, lk=7, d=16):
    return torch.randn(b, h, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def test_arbitrary_4d_mask_falls_back_with_sdpa_answer(caplog, op_calls):
    q, k, v = attention_inputs()
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True
    with caplog.at_level(logging.WARNING, logger=hf_attention.__name__):
        out, weights = hf_attention.lmini_attention_forward(_Module(), q, k, v, mask, scaling=0.3)
        hf_attention.lmini_attention_forward(_Module(), q, k, v, mask.clone(), scaling=0.3)
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=0.3)
    assert weights is None and torch.equal(out, ref)
    assert len(caplog.records) == 1 and "neither causal nor full attention" in caplog.records[0].getMessage()
    assert op_calls == []


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("bias", "a bias"),
        ("per_head", "differs between heads"),
        ("dropout", "dropout"),
        ("position_bias", "position_bias"),
        ("value_dim", "value head dim 24 != key head dim 16"),
    ],
)
def test_other_unsupported_calls_fall_back(kind, reason, caplog, op_calls):
    q, k, v = attention_inputs(lq=5, lk=9)
    mask = hf_attention.visible_mask(5, 9, True, None, "cpu").expand(2, 1, 5, 9)
    kw = {}
    if kind == "bias":
        mask = torch.where(mask, torch.randn(2, 1, 5, 9), torch.finfo(torch.float32).min)
    elif kind == "per_head":
        mask = mask.expand(2, 4, 5, 9).clone()
        mask[:, 1, :, 0] = False
    elif kind == "dropout":
        kw = {"dropout": 0.5}
    elif kind == "position_bias":
        kw = {"position_bias": torch.randn(1, 4, 5, 9)}
    else:
        v = torch.randn(2, 2, 9, 24)
    with caplog.at_level(logging.WARNING, logger=hf_attention.__name__):
        torch.manual_seed(1)
        out, _ = hf_attention.lmini_attention_forward(_Module(), q, k, v, mask, **kw)
    torch.manual_seed(1)
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, mask, **kw)
    assert torch.equal(out, ref)
    assert len(caplog.records) == 1 and reason in caplog.records[0].getMessage()
    assert op_calls == []


@pytest.mark.parametrize("form", ["bool", "additive", "bidirectional", "static_cache", "no_mask"])
def test_served_mask_forms_match_sdpa(form, caplog, op_calls):
    """Masks the op serves, straight into the attention function: the same answer as SDPA."""
    lq, lk = 5, 11
    q, k, v = attention_inputs(b=3, lq=lq, lk=lk)
    pad = torch.zeros(3, lk, dtype=torch.bool)
    pad[0, :4] = True  # left padding
    pad[2, -2:] = True  # right padding of the keys (queries see them causally or not)
    kw = {}
    if form in ("bool", "additive"):
        mask = hf_attention.visible_mask(lq, lk, True, pad, "cpu")
        if form == "additive":
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    elif form == "bidirectional":
        mask, kw = hf_attention.visible_mask(lq, lk, False, pad, "cpu"), {"is_causal": False}
    elif form == "static_cache":  # 5 queries at positions 3..7 of a cache of 11 slots (8 written)
        mask = hf_attention.visible_mask(lq, 8, True, None, "cpu").expand(3, 1, lq, 8)
        mask = torch.cat([mask, torch.zeros(3, 1, lq, 3, dtype=torch.bool)], dim=-1)
    else:
        mask = None
    with caplog.at_level(logging.WARNING, logger=hf_attention.__name__):
        out, _ = hf_attention.lmini_attention_forward(_Module(), q, k, v, mask, scaling=0.2, **kw)
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=0.2, **kw)
    seen = mask.any(-1).squeeze(1) if mask is not None else torch.ones(3, lq, dtype=torch.bool)
    assert_rows_close(out, ref, 1e-5, rows=seen[..., None].expand(3, lq, 4))  # rows that see a key
    assert caplog.records == [] and len(op_calls) == 1
    assert op_calls[0]["softmax_scale"] == 0.2


def test_softcap_sinks_and_mixed_dtypes_are_refused():
    q, k, v = attention_inputs()
    for kw in ({"softcap": 30.0}, {"s_aux": torch.zeros(4)}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            hf_attention.lmini_attention_forward(_Module(), q, k, v, None, **kw)
    with pytest.raises(TypeError, match="dtype"):  # the op's own check, as SDPA refuses them too
        hf_attention.lmini_attention_forward(_Module(), q, k.double(), v.double(), None)


def test_register_is_idempotent():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    before = (len(AttentionInterface._global_mapping), len(AttentionMaskInterface._global_mapping))
    assert register_hf_attention() == register_hf_attention() == "lmini"
    assert (len(AttentionInterface._global_mapping), len(AttentionMaskInterface._global_mapping)) == before
    assert AttentionInterface._global_mapping["lmini"] is hf_attention.lmini_attention_forward


def test_from_pretrained_and_set_attn_implementation(tmp_path, op_calls):
    """The README's two routes: a saved model loaded with attn_implementation="lmini", and a
    built model switched with set_attn_implementation."""
    sdpa, _ = model_pair("llama")
    sdpa.save_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        ref = sdpa(ids).logits
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="lmini").eval()
        out_loaded = loaded(ids).logits
        sdpa.set_attn_implementation("lmini")
        out_switched = sdpa(ids).logits
    assert len(op_calls) == 2 * sdpa.config.num_hidden_layers
    assert_rows_close(out_loaded, ref, 1e-5)
    assert_rows_close(out_switched, ref, 1e-5)


def test_the_library_imports_without_transformers():
    """Importing lmini_kernels and its integrations loads no transformers; with transformers
    unimportable, register_hf_attention says what to install."""
    code = (
        "import sys, lmini_kernels, lmini_kernels.integrations as i\n"
        "print('transformers' in sys.modules)\n"
        "sys.modules['transformers'] = None  # import transformers now raises ImportError\n"
        "try:\n"
        "    i.register_hf_attention()\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, error = out.stdout.strip().splitlines()
    assert loaded == "False"
    assert error.startswith("ImportError: register_hf_attention needs transformers: pip install")


def test_float64_runs_on_the_reference_backend(op_calls):
    """float64 is not a cpu-kernel dtype: the op's auto choice takes its reference backend."""
    q, k, v = (t.double() for t in attention_inputs(lq=4, lk=9))
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, :3] = True
    mask = hf_attention.visible_mask(4, 9, True, pad, "cpu")
    out, _ = hf_attention.lmini_attention_forward(_Module(), q, k, v, mask)
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, mask)
    assert out.dtype == torch.float64 and len(op_calls) == 1
    assert_rows_close(out, ref, 1e-12)


def test_packed_sequences_fall_back_to_sdpa(caplog, op_calls):
    """Two sequences packed in one row (position_ids restart, no attention mask, no cache: the
    case transformers checks for packing) get a block-diagonal causal mask: not the op's."""
    sdpa, lmini = model_pair("llama")
    ids = torch.randint(1, VOCAB, (1, 11))
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]])
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger=hf_attention.__name__):
        out = lmini(ids, position_ids=pos, use_cache=False).logits
        ref = sdpa(ids, position_ids=pos, use_cache=False).logits
    assert torch.equal(out, ref) and op_calls == []
    assert len(caplog.records) == 1 and "neither causal nor full attention" in caplog.records[0].getMessage()


def test_a_sliding_window_wider_than_the_sequence_runs_the_op(op_calls):
    sdpa, lmini = model_pair("qwen2", use_sliding_window=True, sliding_window=64, max_window_layers=0)
    assert set(lmini.config.layer_types) == {"sliding_attention"}
    ids, mask = padded_batch([12, 7], "left", 12)
    with torch.no_grad():
        out = lmini(ids, attention_mask=mask).logits
        ref = sdpa(ids, attention_mask=mask).logits
    assert len(op_calls) == lmini.config.num_hidden_layers and not hf_attention._warned
    assert_rows_close(out, ref, 1e-5, rows=mask.bool())


def test_each_mask_is_read_once_per_forward(monkeypatch, op_calls):
    """The layers of one forward share one mask: it is read back once, not once per layer."""
    reads = []
    real = hf_attention._read_mask
    monkeypatch.setattr(hf_attention, "_read_mask", lambda *a: reads.append(a[1:]) or real(*a))
    _, lmini = model_pair("qwen2")
    ids, mask = padded_batch([10, 6], "right", 10)
    with torch.no_grad():
        lmini(ids, attention_mask=mask)
        lmini(ids, attention_mask=mask)
    assert reads == [(10, 10), (10, 10)] and len(op_calls) == 2 * lmini.config.num_hidden_layers
