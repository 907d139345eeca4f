"""FLOP accounting of LLaVA-v1.5, LLaVA-Mini and our fused pipeline, per component.

Every figure is counted, not estimated: the reference model (``llava_mini``) is built on the
meta device (no memory, no weights) and one image request runs under
:class:`torch.utils.flop_counter.FlopCounterMode`. FLOPs are attributed to components by the
module that executes them:

==============  ==============================================================
component       modules
==============  ==============================================================
``vit``         ``model.vision_tower``
``projector``   ``model.mm_projector``
``compression`` ``model.compressor`` (and the folded compressor of our pipeline)
``prefusion``   ``model.prefusion_layers``
``llm``         ``model.layers``, ``model.norm``, ``lm_head``, ``model.embed_tokens``
==============  ==============================================================

Two conventions:

* ``paper``: weight matmuls only. A matmul or convolution counts (2 x multiply-adds) only when
  one operand is a model constant (a parameter, a view of one, or a constant folded from
  parameters); attention scores and weighted sums are not counted. This is what the paper's
  calflops totals amount to: 2 x parameters x tokens.
* ``full``: every matmul, attention included (FlopCounterMode's own formulas).

What is run, per model (``text_tokens`` = N text tokens, 43 by default: the length that
reproduces the paper's totals; the prompt also holds the image placeholder, which the official
pre-fusion carries as one masked text row and the LLM replaces by the vision tokens):

* official pipelines (``llava-v1.5-7b``, ``llava-mini-*``): as the official code executes them.
  In particular the CLIP tower runs all 24 layers (HF ``CLIPVisionModel`` computes every layer
  before ``hidden_states[-2]`` is taken), counted by running the reference tower with
  ``select_layer=-1`` (same shapes).
* ``llava-mini-vicuna-7b-fused``: our pipeline. CLIP stops at the selected layer (23 layers);
  the compressor is folded (the key projection folded into the C*C queries, the value projection
  moved after the weighted sum, LayerNorm_kv's affine folded: one pass over the features; the
  parameter-only folding is done once per model and not counted per image); the last pre-fusion
  layer computes only K and V for the vision rows and Q, O and the MLP only for the kept rows.
* ``llava-mini-vicuna-7b-followup``: a second question on a cached image: the vision rows' K/V
  of every pre-fusion layer and the compressed token come from the cache
  (``FusedPreFusion.fuse``), so only the text rows run through pre-fusion; then the LLM.
* ``llava-v1.5-7b@672``: LLaVA-v1.5 fed the same 672 px split as LLaVA-Mini-HD (4 sub-images
  and the global view, 5 x 576 tokens to the LLM), as in the paper's table.

The fused and follow-up pre-fusion run the library's ``FusedPreFusion`` (sharing the reference
model's parameters); the folded compressor's per-image work is written out in
:func:`folded_compress`. Code that is not a model module runs inside stage modules of the
counting wrapper, so every FLOP is attributed to one component.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

COMPONENTS = ("vit", "projector", "compression", "prefusion", "llm")
CONVENTIONS = ("paper", "full")

#: The text length that reproduces the paper's totals (8.55 / 1.96 / 40.49 TFLOPs).
DEFAULT_TEXT_TOKENS = 43

#: Model stage (``LlavaMini.stages``) -> the component its FLOPs count under.
STAGE_COMPONENTS = {"vit": "vit", "projector": "projector", "compression": "compression", "prefusion": "prefusion",
                    "embed": "llm", "llm": "llm", "norm": "llm", "lm_head": "llm"}  # fmt: skip


#: The paper's figures in TFLOPs (table 14 and the ablations), None where it gives none.
PAPER_TFLOPS: dict[str, dict[str, float | None]] = {
    "llava-v1.5-7b": dict(vit=0.349, projector=0.024, compression=None, prefusion=None, llm=8.177, total=8.55),
    "llava-mini-vicuna-7b": dict(vit=0.349, projector=0.024, compression=0.001, prefusion=0.125, llm=1.460, total=1.96),
    "llava-v1.5-7b@672": dict(vit=1.745, projector=0.121, compression=None, prefusion=None, llm=38.623, total=40.49),
    "llava-mini-hd-vicuna-7b": dict(
        vit=1.745, projector=0.121, compression=0.009, prefusion=1.183, llm=4.131, total=7.19
    ),
}
PAPER_ABLATION_TOTALS = {
    "prefusion-1": 1.21,
    "prefusion-2": 1.46,
    "prefusion-3": 1.81,
    "prefusion-4": 1.96,
    "no-prefusion-1tok": 0.96,
    "no-prefusion-16tok": 1.16,
    "no-prefusion-64tok": 1.79,
    "no-prefusion-144tok": 2.85,
}

#: Where the paper disagrees with itself or with the architecture (printed under the table).
PAPER_NOTES = (
    "The paper's pre-fusion/LLM split (0.125 / 1.460 T for LLaVA-Mini) does not follow from the architecture: "
    "4 LLaMA layers over 576 + 1 + text rows cost about 1.00 T and the LLM over 1 + text tokens about 0.58 T; "
    "the total (1.96 T) agrees.",
    "LLaVA-Mini-HD: table 14 says 7.19 T, section 5.2 says 8.13 T; counting the architecture gives the latter.",
    "Pre-fusion ablation: the paper lists 1.81 T for 3 layers, between 1.46 and 1.96 the layers are 0.25 T each "
    "(1.71 T).",
    "The paper's ViT figure (0.349 T) counts all 24 CLIP layers, as the official code runs them; only 23 are needed "
    "(features come from the second-to-last layer): our fused pipeline skips the last one.",
)


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class FlopCase:
    """One request to count: a named config, how it is run, and what the table shows for it."""

    name: str
    config_name: str
    pipeline: str = "official"  # official | fused | followup | baseline672
    config_changes: tuple[tuple[str, object], ...] = ()
    paper_total: float | None = None


MODEL_CASES: tuple[FlopCase, ...] = (
    FlopCase("llava-v1.5-7b", "llava-v1.5-7b", paper_total=8.55),
    FlopCase("llava-mini-vicuna-7b", "llava-mini-vicuna-7b", paper_total=1.96),
    FlopCase("llava-mini-vicuna-7b-fused", "llava-mini-vicuna-7b", pipeline="fused"),
    FlopCase("llava-mini-vicuna-7b-followup", "llava-mini-vicuna-7b", pipeline="followup"),
    FlopCase("llava-v1.5-7b@672", "llava-v1.5-7b", pipeline="baseline672", paper_total=40.49),
    FlopCase("llava-mini-hd-vicuna-7b", "llava-mini-hd-vicuna-7b", paper_total=7.19),
    FlopCase("llava-mini-llama3.1-8b", "llava-mini-llama3.1-8b"),
)

ABLATION_CASES: tuple[FlopCase, ...] = tuple(
    FlopCase(f"prefusion-{n}", "llava-mini-vicuna-7b", config_changes=(("prefusion_layers", n),),
             paper_total=PAPER_ABLATION_TOTALS[f"prefusion-{n}"])
    for n in (1, 2, 3, 4)
) + tuple(
    FlopCase(f"no-prefusion-{c * c}tok", "llava-mini-vicuna-7b",
             config_changes=(("prefusion_layers", 0), ("compressor_size", c)),
             paper_total=PAPER_ABLATION_TOTALS[f"no-prefusion-{c * c}tok"])
    for c in (1, 4, 8, 12)
)  # fmt: skip


def case_config(case: FlopCase):
    """The :class:`llava_mini.LlavaMiniConfig` a case runs (official cases run every CLIP layer)."""
    from llava_mini import LlavaMiniConfig

    cfg = LlavaMiniConfig.from_name(case.config_name)
    if case.config_changes:
        cfg = cfg.replace(**dict(case.config_changes))
    if case.pipeline != "fused":
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, select_layer=-1))
    return cfg


# ----------------------------------------------------------------------------- counting
def _storage_id(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def weight_only_mapping(constants: set[int]) -> dict:
    """FlopCounterMode ``custom_mapping`` that counts an op only when an input aliases one of
    the ``constants`` storages (the paper convention)."""

    def wrap(formula: Callable) -> Callable:
        def counted(*args, out_val=None, **kwargs):
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.Tensor) and _storage_id(a) in constants:
                    return formula(*args, out_val=out_val, **kwargs)
            return 0

        counted._get_raw = True  # FlopCounterMode passes raw tensors, not shapes
        return counted

    return {op: wrap(f) for op, f in flop_registry.items()}


class _FlopRun(nn.Module):
    """Calls ``fn`` as a module so the module tracker names every submodule from the root
    (``_FlopRun.lmini.model.vision_tower`` ...), and gives extra stage modules
    (``_FlopRun.stage_compression``) to code that is not a model module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lmini = model
        for c in COMPONENTS:
            self.add_module(f"stage_{c}", _Stage())

    def forward(self, fn: Callable[[], object]) -> object:
        return fn()


class _Stage(nn.Module):
    def forward(self, fn: Callable[[], object]) -> object:
        return fn()


def build_meta_model(config, dtype: torch.dtype = torch.float16):
    """The reference model on the meta device (pure-PyTorch reference backend)."""
    from llava_mini import LlavaMini

    with torch.device("meta"):
        model = LlavaMini(config, backend="reference").to(dtype)
    return model.eval()


def _meta_ids(n: int) -> torch.Tensor:
    return torch.zeros(1, n, dtype=torch.long, device="meta")


def _pixels(model, parts: int) -> torch.Tensor:
    v = model.config.vision
    return torch.zeros(1, parts, 3, v.image_size, v.image_size, dtype=model.dtype, device="meta")


def _llm(model, vision: torch.Tensor, text_tokens: int) -> torch.Tensor:
    """The LLM prefill over [vision tokens, N text embeddings] (the placeholder replaced)."""
    text = model.embed(_meta_ids(text_tokens))
    x = torch.cat([vision.to(text.dtype), text], dim=1)
    n = x.shape[1]
    pos = torch.arange(n, device=x.device)[None]
    valid = torch.ones(1, n, dtype=torch.bool, device=x.device)
    return model.decode(x, pos, valid)


def folded_compress(compressor, x: torch.Tensor, folded: dict[str, torch.Tensor]) -> torch.Tensor:
    """The folded compressor's per-image work (the math of ``lmini_kernels/ops/compress/folded.py``):
    scores of the K = C*C*heads folded queries against the
    affine-free LayerNorm of the features, softmax, weighted sum of the features, then the
    value and out projections of the C*C rows. ``folded`` holds the parameter-only constants
    (computed once per model by :func:`fold_compressor`)."""
    b, n, dim = x.shape
    heads = compressor.num_heads
    dh = dim // heads
    y = F.layer_norm(x.float(), (dim,), eps=compressor.ln_kv.eps)
    s = torch.matmul(y, folded["a"].t()) + folded["p"].t()  # (B, N, K)
    prob = torch.softmax(s, dim=1)
    acc = torch.matmul(prob.transpose(1, 2), y)  # (B, K, D)
    nq = acc.shape[1] // heads
    acc = acc.view(b, nq, heads, dim)
    o = torch.einsum("bqhd,hed->bqhe", acc, folded["wv"]).reshape(b, nq, heads * dh) + folded["bv"]
    return compressor.attn.out_proj(o.to(x.dtype))


def fold_compressor(compressor, n_tokens: int) -> dict[str, torch.Tensor]:
    """Parameter-only constants of the folded compressor (shapes only matter here)."""
    dim, heads = compressor.embed_dim, compressor.num_heads
    k = compressor.query.shape[0] * heads
    dev = compressor.query.device
    return {
        "a": torch.empty(k, dim, device=dev),
        "p": torch.empty(k, n_tokens, device=dev),
        "wv": torch.empty(heads, dim // heads, dim, device=dev),
        "bv": torch.empty(dim, device=dev),
    }


def _run_case(case: FlopCase, model, run: _FlopRun, text_tokens: int) -> None:
    cfg = model.config
    ids = _meta_ids(text_tokens + 1)  # N text tokens + the image placeholder
    if case.pipeline == "baseline672":
        px = _pixels(model, 5)
        feats = model.encode_images(px.flatten(0, 1))
        vision = model.project(feats).reshape(1, -1, cfg.text.hidden_size)
        _llm(model, vision, text_tokens)
    elif case.pipeline == "official":
        px = _pixels(model, cfg.image_parts)
        if cfg.is_mini:
            vision, _fused_text = model.encode_images_mini(px, ids)
        else:
            vision, _ = model.encode_images_baseline(px, ids)
        _llm(model, vision, text_tokens)
    elif case.pipeline == "fused":
        _run_fused(model, run, ids, text_tokens)
    elif case.pipeline == "followup":
        _run_followup(model, run, ids, text_tokens)
    else:
        raise ValueError(f"unknown pipeline {case.pipeline!r}")


def _fused_prefusion(model, run: _FlopRun):
    """The library's FusedPreFusion sharing the model's pre-fusion parameters (reference attention)."""
    if not hasattr(run, "fused_prefusion"):
        run.fused_prefusion = model.fused_prefusion(backend="reference")
    return run.fused_prefusion


def _run_fused(model, run: _FlopRun, ids: torch.Tensor, text_tokens: int) -> None:
    px = _pixels(model, 1)
    clip = model.encode_images(px[:, 0])  # stops at the selected layer
    comp = model.model.compressor
    folded = fold_compressor(comp, clip.shape[1])
    run.constants.update(_storage_id(t) for t in folded.values())
    compressed = run.stage_compression(lambda: folded_compress(comp, clip, folded))
    vision = model.project(clip)
    compressed = model.project(compressed)
    text = model.embed(ids)
    fpf = _fused_prefusion(model, run)
    kept, _fused_text = run.stage_prefusion(lambda: fpf(vision, compressed, text, ids <= 0))
    _llm(model, kept, text_tokens)


def _run_followup(model, run: _FlopRun, ids: torch.Tensor, text_tokens: int) -> None:
    from lmini_kernels.modules.prefusion import PrefusionCache

    cfg, t = model.config, model.config.text
    n_prefix = cfg.prefusion_vision_tokens + cfg.num_queries
    text = model.embed(ids)

    def kv() -> torch.Tensor:
        return torch.empty(1, n_prefix, t.num_kv_heads, t.head_dim, dtype=text.dtype, device="meta")

    layers = range(cfg.prefusion_layers)
    cache = PrefusionCache([kv() for _ in layers], [kv() for _ in layers],
                           torch.empty(1, cfg.num_queries, t.hidden_size, dtype=text.dtype, device="meta"))  # fmt: skip
    fpf = _fused_prefusion(model, run)
    kept, _fused_text = run.stage_prefusion(lambda: fpf.fuse(cache, text, ids <= 0))
    _llm(model, kept, text_tokens)


@dataclass
class FlopResult:
    """FLOPs of one case per component (plain FLOPs, not TFLOPs)."""

    name: str
    flops: dict[str, int]
    by_op: dict[str, int]

    @property
    def total(self) -> int:
        return self.flops["total"]


def count_case(case: FlopCase, convention: str = "paper", text_tokens: int = DEFAULT_TEXT_TOKENS) -> FlopResult:
    """Count one case on the meta device; returns per-component FLOPs plus ``total``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    if not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens: expected a positive int, got {text_tokens!r}")
    model = build_meta_model(case_config(case))
    return count_model(model, case, convention, text_tokens)


def count_model(model, case: FlopCase, convention: str, text_tokens: int) -> FlopResult:
    """Count ``case`` on an already built (meta) model."""
    run = _FlopRun(model)
    run.constants = {_storage_id(p) for p in model.parameters()}
    mapping = weight_only_mapping(run.constants) if convention == "paper" else {}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        run(lambda: _run_case(case, model, run, text_tokens))
    counts = counter.get_flop_counts()
    comp = dict.fromkeys(COMPONENTS, 0)
    # the stages' modules (one entry per layer): deeper names are already included in those
    # (counts accumulate up the module tree)
    component_of = {f"_FlopRun.lmini.{st.path}": STAGE_COMPONENTS[st.stage] for st in model.stages()}
    for name, ops in counts.items():
        c = component_of.get(name)
        if c is not None:
            comp[c] += sum(ops.values())
    for c in COMPONENTS:
        comp[c] += sum(counts.get(f"_FlopRun.stage_{c}", {}).values())
    total = counter.get_total_flops()
    other = total - sum(comp.values())
    if other != 0:
        raise RuntimeError(f"{case.name}: {other} FLOPs ran outside every component module")
    comp["total"] = total
    by_op = {str(k): int(v) for k, v in counts.get("Global", {}).items()}
    return FlopResult(case.name, comp, by_op)


def reduction(total: float, baseline_total: float) -> float:
    """Fraction of the baseline's FLOPs saved."""
    return 1.0 - total / baseline_total


def count_all(
    convention: str = "paper", text_tokens: int = DEFAULT_TEXT_TOKENS, *, ablations: bool = True
) -> dict[str, object]:
    """Every model (and, with ``ablations``, the paper's ablations): the ``--json`` document."""
    models = {c.name: count_case(c, convention, text_tokens).flops for c in MODEL_CASES}
    base = models["llava-v1.5-7b"]["total"]
    doc: dict[str, object] = {
        "convention": convention,
        "text_tokens": text_tokens,
        "models": models,
        "reduction": {name: reduction(f["total"], base) for name, f in models.items()},
    }
    if ablations:
        doc["ablations"] = {c.name: count_case(c, convention, text_tokens).flops for c in ABLATION_CASES}
    doc["fused_source"] = FUSED_SOURCE
    return doc


#: How the -fused and -followup rows are counted (said in the output).
FUSED_SOURCE = (
    "pre-fusion of -fused/-followup counted through lmini_kernels.modules.FusedPreFusion (pruned last layer; "
    "vision-prefix cache via fuse()); the folded compressor's per-image math is expressed in "
    "lmini_tools.profiling.flops.folded_compress (the fused compress backends are custom ops that do not run "
    "on the meta device)"
)


# ----------------------------------------------------------------------------- table
def _t(x: float | None, width: int = 7, digits: int = 3) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.{digits}f}"


def format_table(doc: dict[str, object]) -> str:
    """TFLOPs per component beside the paper's figures, and the paper's inconsistencies."""
    models: dict[str, dict[str, int]] = doc["models"]  # type: ignore[assignment]
    what = "weight matmuls only: 2 x parameters x tokens" if doc["convention"] == "paper" else "every matmul"
    lines = [
        f"FLOPs per request, one 336 px image (672 px where named), {doc['text_tokens']} text tokens, "
        f"convention '{doc['convention']}' ({what})",
        "TFLOPs; in brackets the paper's total; saved = FLOPs saved against LLaVA-v1.5 at the same resolution.",
        "",
        f"{'model':32s} {'ViT':>7s} {'proj':>7s} {'compr':>7s} {'prefus':>7s} {'LLM':>8s} {'total':>8s} "
        f"{'(paper)':>8s} {'saved':>7s}",
    ]  # fmt: skip
    for name, f in models.items():
        t = {k: v / 1e12 for k, v in f.items()}
        paper = PAPER_TFLOPS.get(name, {}).get("total")
        # saved against LLaVA-v1.5 at the same resolution (the JSON's "reduction" is always vs 336 px)
        base = "llava-v1.5-7b@672" if ("@672" in name or "-hd-" in name) else "llava-v1.5-7b"
        saved = f"{reduction(f['total'], models[base]['total']) * 100:5.1f}%" if base in models else "-"
        lines.append(
            f"{name:32s} {_t(t['vit'])} {_t(t['projector'])} {_t(t['compression'], 7, 4)} {_t(t['prefusion'])} "
            f"{_t(t['llm'], 8)} {_t(t['total'], 8)} {('(' + format(paper, '.2f') + ')') if paper else '':>8s} "
            f"{saved:>7s}{'  vs @672' if base.endswith('@672') else ''}"
        )
    for name, p in PAPER_TFLOPS.items():
        lines.append(
            f"{'  paper: ' + name:32s} {_t(p['vit'])} {_t(p['projector'])} {_t(p['compression'], 7, 4)} "
            f"{_t(p['prefusion'])} {_t(p['llm'], 8)} {_t(p['total'], 8)}"
        )
    abl: dict[str, dict[str, int]] | None = doc.get("ablations")  # type: ignore[assignment]
    if abl:
        lines += ["", "Ablations of llava-mini-vicuna-7b (paper, section 5): total TFLOPs (paper)"]
        for name, f in abl.items():
            paper = PAPER_ABLATION_TOTALS.get(name)
            lines.append(f"  {name:22s} {f['total'] / 1e12:7.3f}  ({paper:.2f})")
    lines += ["", "Notes:"] + [f"- {n}" for n in PAPER_NOTES] + [f"- -fused/-followup: {doc['fused_source']}."]
    return "\n".join(lines)


__all__ = [
    "ABLATION_CASES",
    "COMPONENTS",
    "CONVENTIONS",
    "DEFAULT_TEXT_TOKENS",
    "FlopCase",
    "FlopResult",
    "MODEL_CASES",
    "PAPER_TFLOPS",
    "count_all",
    "count_case",
    "format_table",
    "reduction",
]
