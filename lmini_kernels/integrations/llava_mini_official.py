"""The library's fused ops inside an instance of the official LLaVA-Mini model.

:func:`apply_lmini_kernels_to_llava_mini` patches one instance of the official
``LlavaMiniLlamaForCausalLM`` (GitHub ``ictnlp/LLaVA-Mini``, ``llavamini/model``), found by its
attribute structure, not by import (the library never imports the official code):

- ``model.get_model().compressor`` (the official ``Resampler``) becomes a
  :class:`lmini_kernels.FusedResampler` that *shares* the original's parameters (same state_dict
  keys, no copy; :meth:`~lmini_kernels.FusedResampler.freeze` is on, see below);
- ``encode_images_mini`` and ``prepare_inputs_labels_for_multimodal`` are rebound on this
  instance only (the class is untouched, other instances are not patched). The pre-fusion runs
  through a :class:`lmini_kernels.FusedPreFusion` built from the model's own
  ``prefusion_layers`` (shared weights): last layer pruned, the frames of a video in batched
  chunks (:meth:`~lmini_kernels.FusedPreFusion.fuse_video_sum`), and a per-image vision-prefix
  cache, so a follow-up question on the same image tensor runs only its text rows.

What stays exactly as the official code does it (checked by
``tests/integrations/test_llava_mini_official.py`` against a stand-in written from the official
code): the text embeddings ``embed(input_ids.clamp(min=0)).detach()``; with labels, answer
tokens count as padding (``input_ids * (labels == -100)``); ``padding_mask = input_ids <= 0``
(padding *and* the image placeholder); position ids ``cumsum(not padded) - 1`` with padded
positions at 1; the kept rows (the C*C compressed rows before the text, the last L rows) and
padded text rows given their raw embeddings back; the HD prefix ``[re-tiled projected
sub-images, projected global view, compressed]`` with the compressor on the re-tiled grid; the
video's tokens in frame order and its text the float32 mean over frames cast back; and the
splice into the LLM input (the official indexing, its left-padding quirk included: the
placeholder's index is taken after dropping masked positions but applied to the unmasked
text features), labels, truncation, padding side, returned masks and position ids.

Cache safety. An entry is keyed on the image tensor's identity (a weak reference, so a new tensor
at a reused address misses), its version counter (an in-place write misses), storage, shape,
strides and dtype, and on the identity and version counter of every parameter of the vision
tower, compressor, projector and pre-fusion layers and of the RoPE frequencies: an optimizer
step or ``load_state_dict`` invalidates it. Writes that bypass version counters
(``p.data.copy_()``, NumPy views) cannot be seen: call :meth:`LlavaMiniPatch.refresh` after
one. Tensors made under ``torch.inference_mode()`` have no version counter and are never
cached; nor is anything while autograd records a graph through parameters that require grad.
The compressor's :meth:`~lmini_kernels.FusedResampler.freeze` follows the same rules.
"""

from __future__ import annotations

import math
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmini_kernels.modules import FusedPreFusion, FusedResampler, PrefusionCache

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "LlavaMiniPatch",
    "UnsupportedModelError",
    "apply_lmini_kernels_to_llava_mini",
    "is_official_llava_mini",
    "revert_lmini_kernels",
]

#: the official placeholder id of the image in ``input_ids`` and the ignored label
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

#: the rebound methods, and where the patch handle lives, in the instance's ``__dict__``
_METHODS = ("encode_images_mini", "prepare_inputs_labels_for_multimodal")
_HANDLE = "_lmini_kernels_patch"
_MISSING = object()

#: RoPE types whose rotation is the ``inv_freq`` buffer alone (no cos/sin scaling, no update)
_ROPE_TYPES = ("default", "linear", "llama3")

#: parameters of an HF ``LlamaDecoderLayer`` without biases: what FusedPreFusion computes
_LAYER_PARAMS = frozenset(
    {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
     "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
     "input_layernorm.weight", "post_attention_layernorm.weight"}
)  # fmt: skip

#: frames per batched pre-fusion chunk by device type (as the reference model: GEMMs of ~10k rows
#: on a GPU; on a CPU a 16-frame chunk's activations fall out of the caches)
VIDEO_CHUNK_FRAMES = {"cuda": 16, "cpu": 4}


class UnsupportedModelError(TypeError):
    """The model is not what the patch expects; the message names its class and the missing piece."""


def _unsupported(model: object, piece: str, expected: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{type(model).__name__} cannot take the LLaVA-Mini patch: {piece}: {expected}")


# ---------------------------------------------------------------------------------- inspection
@dataclass
class _Layout:
    """What the inspection of a model found: everything the patched methods need."""

    inner: nn.Module
    config: Any
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope: nn.Module  # the module whose ``inv_freq`` the official pre-fusion rotates with
    attention_dropout: float


def _need(model: object, owner: object, name: str, where: str, expected: str) -> Any:
    value = getattr(owner, name, _MISSING)
    if value is _MISSING or value is None:
        raise _unsupported(model, f"{where}{name}", f"missing (expected {expected})")
    return value


def _norm_eps(model: object, norm: nn.Module, where: str) -> float:
    for name in ("variance_epsilon", "eps"):
        eps = getattr(norm, name, None)
        if isinstance(eps, (int, float)) and not isinstance(eps, bool):
            return float(eps)
    raise _unsupported(model, where, "an RMSNorm with variance_epsilon or eps")


def _rope_type(module: nn.Module, config: Any) -> str:
    kind = getattr(module, "rope_type", None)
    if kind is None:
        params = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
        kind = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    return str(kind)


def _check_compressor(model: object, comp: nn.Module) -> int:
    """The official Resampler's layout; returns the width of the features it reads."""
    where = "get_model().compressor."
    if isinstance(comp, FusedResampler):
        raise _unsupported(model, "get_model().compressor", "already a FusedResampler (patched by someone else?)")
    for name, kind in (("query", torch.Tensor), ("pos_embed", torch.Tensor), ("attn", nn.MultiheadAttention),
                       ("ln_q", nn.LayerNorm), ("ln_kv", nn.LayerNorm)):  # fmt: skip
        value = _need(model, comp, name, where, kind.__name__)
        if not isinstance(value, kind):
            raise _unsupported(model, where + name, f"expected {kind.__name__}, got {type(value).__name__}")
    q = comp.query
    side = math.isqrt(q.shape[0]) if q.dim() == 2 else 0
    if q.dim() != 2 or side * side != q.shape[0] or q.shape[1] != comp.attn.embed_dim:
        raise _unsupported(model, where + "query", f"expected (C*C, {comp.attn.embed_dim}), got {tuple(q.shape)}")
    if tuple(comp.pos_embed.shape) != tuple(q.shape):
        raise _unsupported(model, where + "pos_embed", f"expected {tuple(q.shape)}, got {tuple(comp.pos_embed.shape)}")
    kv = getattr(comp, "kv_proj", None)
    if kv is None or isinstance(kv, nn.Identity):
        return comp.attn.embed_dim
    if isinstance(kv, nn.Linear) and kv.bias is None:
        return kv.in_features
    raise _unsupported(model, where + "kv_proj", f"nn.Identity or nn.Linear without bias, got {type(kv).__name__}")


def _check_projector(model: object, proj: nn.Module, in_dim: int, hidden: int) -> None:
    """A token-wise projector (every token projected on its own, so frames batch exactly):
    the official ``linear``, ``mlp{N}x_gelu`` or ``identity`` types."""
    where = "get_model().mm_projector"
    if isinstance(proj, nn.Linear):
        mods: list[nn.Module] = [proj]
    elif isinstance(proj, nn.Sequential):
        mods = list(proj)
    elif not any(True for _ in proj.parameters()) and type(proj).__name__ in ("IdentityMap", "Identity"):
        if in_dim != hidden:
            raise _unsupported(model, where, f"an identity projector needs mm_hidden_size {in_dim} == hidden {hidden}")
        return
    else:
        raise _unsupported(
            model, where, f"a token-wise projector (linear, mlp<N>x_gelu or identity), got {type(proj).__name__}"
        )
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    if not linears or any(not isinstance(m, (nn.Linear, nn.GELU)) for m in mods):
        kinds = ", ".join(type(m).__name__ for m in mods)
        raise _unsupported(model, where, f"Linear/GELU layers only (linear or mlp<N>x_gelu), got [{kinds}]")
    if linears[0].in_features != in_dim or linears[-1].out_features != hidden:
        raise _unsupported(
            model, where, f"maps {linears[0].in_features} -> {linears[-1].out_features}, expected {in_dim} -> {hidden}"
        )


def _check_tower(model: object, tower: nn.Module, in_dim: int) -> None:
    where = "get_vision_tower()"
    width = getattr(tower, "hidden_size", None)
    if width != in_dim:
        raise _unsupported(
            model, where + ".hidden_size", f"{width}, but the compressor reads features of width {in_dim}"
        )
    n = getattr(tower, "num_patches", None)
    if n is not None and math.isqrt(n) ** 2 != n:
        raise _unsupported(model, where + ".num_patches", f"{n} is not a square grid (the compressor needs one)")
    select = getattr(tower, "select_feature", "patch")
    if select != "patch":
        raise _unsupported(model, where + ".select_feature", f"'patch' (no CLS token in the grid), got {select!r}")


def _check_layers(model: object, layers: nn.Module, config: Any) -> tuple[float, nn.Module]:
    """HF LlamaDecoderLayer structure, no biases, one eps, one RoPE; returns (eps, RoPE module)."""
    where = "get_model().prefusion_layers"
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise _unsupported(model, where, "a non-empty nn.ModuleList of LlamaDecoderLayer")
    eps: set[float] = set()
    ropes = []
    for i, layer in enumerate(layers):
        names = {n for n, _ in layer.named_parameters()}
        if names != _LAYER_PARAMS:
            extra, missing = sorted(names - _LAYER_PARAMS), sorted(_LAYER_PARAMS - names)
            raise _unsupported(
                model,
                f"{where}[{i}]",
                f"LlamaDecoderLayer parameters without biases (extra {extra}, missing {missing})",
            )
        for norm in ("input_layernorm", "post_attention_layernorm"):
            eps.add(_norm_eps(model, getattr(layer, norm), f"{where}[{i}].{norm}"))
        ropes.append(getattr(layer.self_attn, "rotary_emb", None))
    if len(eps) != 1:
        raise _unsupported(model, where, f"one RMSNorm eps in every layer, got {sorted(eps)}")
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _unsupported(model, "config.hidden_act", f"'silu' (SwiGLU MLP), got {act!r}")
    if all(r is not None for r in ropes):  # transformers 4.43: each attention owns its RoPE
        rope = ropes[0]
        if any(not torch.equal(r.inv_freq, rope.inv_freq) for r in ropes):
            raise _unsupported(model, where, "the same RoPE frequencies in every layer")
    elif any(r is not None for r in ropes):
        raise _unsupported(model, where, "a RoPE module in every layer's self_attn or in none")
    else:  # transformers >= 4.45 / 5.x: the model's rotary_emb makes position_embeddings
        rope = _need(model, model.get_model(), "rotary_emb", "get_model().", "the LLM's rotary embedding")
    if not isinstance(getattr(rope, "inv_freq", None), torch.Tensor):
        raise _unsupported(model, "rotary embedding", "an inv_freq buffer")
    kind = _rope_type(rope, config)
    if kind not in _ROPE_TYPES:
        raise _unsupported(model, "rope type", f"one of {_ROPE_TYPES} (cos/sin from inv_freq alone), got {kind!r}")
    if float(getattr(rope, "attention_scaling", 1.0)) != 1.0:
        raise _unsupported(model, "rotary embedding.attention_scaling", f"1.0, got {rope.attention_scaling}")
    return eps.pop(), rope


def _inspect(model: object) -> _Layout:
    if not isinstance(model, nn.Module):
        raise _unsupported(model, "model", "an nn.Module (the official LlavaMiniLlamaForCausalLM)")
    for name in ("get_model", "get_vision_tower", "get_input_embeddings", *_METHODS):
        if not callable(getattr(model, name, None)):
            raise _unsupported(model, name, "missing (expected the official LlavaMiniMetaForCausalLM method)")
    inner = model.get_model()
    config = getattr(inner, "config", None) or getattr(model, "config", None)
    if config is None:
        raise _unsupported(model, "config", "missing")
    hidden = _need(model, config, "hidden_size", "config.", "an int")
    heads = _need(model, config, "num_attention_heads", "config.", "an int")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if hidden % heads or head_dim * heads != hidden or heads % kv_heads:
        raise _unsupported(
            model, "config", f"head_dim * num_attention_heads == hidden_size ({head_dim} * {heads} vs {hidden}) "
            f"and num_attention_heads a multiple of num_key_value_heads ({kv_heads})"
        )  # fmt: skip
    comp = _need(model, inner, "compressor", "get_model().", "the official Resampler")
    in_dim = _check_compressor(model, comp)
    proj = _need(model, inner, "mm_projector", "get_model().", "the official projector")
    if comp.attn.embed_dim != in_dim:
        raise _unsupported(model, "get_model().compressor", "a kv_proj: features and queries differ in width")
    _check_projector(model, proj, in_dim, hidden)
    tower = model.get_vision_tower()
    if tower is None:
        raise _unsupported(model, "get_vision_tower()", "missing (None): load the vision tower first")
    _check_tower(model, tower, in_dim)
    layers = _need(model, inner, "prefusion_layers", "get_model().", "the pre-fusion LlamaDecoderLayers")
    eps, rope = _check_layers(model, layers, config)
    embed = model.get_input_embeddings()
    if getattr(getattr(embed, "weight", None), "shape", (0, 0))[-1] != hidden:
        raise _unsupported(model, "get_input_embeddings()", f"an embedding of width {hidden}")
    return _Layout(inner, config, heads, kv_heads, eps, rope, float(getattr(config, "attention_dropout", 0.0) or 0.0))


def is_official_llava_mini(model: object) -> bool:
    """Whether ``model`` looks like the official LLaVA-Mini: an ``nn.Module`` with its methods
    ``get_model``, ``encode_images_mini`` and ``prepare_inputs_labels_for_multimodal``.
    :func:`apply_lmini_kernels_to_llava_mini` may still refuse it, naming the missing piece."""
    return isinstance(model, nn.Module) and all(callable(getattr(model, n, None)) for n in ("get_model", *_METHODS))


# ---------------------------------------------------------------------------------- helpers
def _retile(features: torch.Tensor, ratio: int) -> torch.Tensor:
    """(B, ratio*ratio, g*g, D) sub-image grids, row-major -> one (B, (ratio*g)**2, D) grid, as the
    official ``view(b, r, r, g, g, d).transpose(2, 3)``."""
    b, _, n, d = features.shape
    g = math.isqrt(n)
    return features.reshape(b, ratio, ratio, g, g, d).transpose(2, 3).reshape(b, ratio * g * ratio * g, d)


def _tensor_key(t: torch.Tensor) -> tuple:
    return (id(t), t._version, t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)


@dataclass
class CacheStats:
    """Vision-prefix cache counters (images only; videos are never cached)."""

    hits: int = 0
    misses: int = 0
    uncacheable: int = 0


# ---------------------------------------------------------------------------------- the patch
@dataclass
class LlavaMiniPatch:
    """The handle of one patched instance: :meth:`revert`, :meth:`clear_cache`, :meth:`refresh`.

    ``fused_prefusion`` (shares the model's pre-fusion weights) and ``compressor`` (the
    FusedResampler now at ``model.get_model().compressor``) are public for inspection.
    """

    model: nn.Module
    layout: _Layout
    compressor: FusedResampler
    original_compressor: nn.Module
    fused_prefusion: FusedPreFusion
    cache_size: int
    video_chunk_frames: int | None
    saved: dict[str, Any] = field(default_factory=dict)
    stats: CacheStats = field(default_factory=CacheStats)
    active: bool = True
    _cache: OrderedDict = field(default_factory=OrderedDict)

    # ------------------------------------------------------------ life cycle
    def revert(self) -> None:
        """Put back the original compressor and the class's methods; drop the cache. Idempotent."""
        if not self.active:
            return
        _undo(self.model, self.layout.inner, self.original_compressor, self.saved)
        self.active = False
        self.clear_cache()

    def clear_cache(self) -> None:
        """Drop every cached vision prefix."""
        self._cache.clear()

    def refresh(self) -> None:
        """Drop every cache (vision prefixes and the compressor's frozen fold), e.g. after a
        parameter write that bypasses the version counters (``p.data.copy_()``)."""
        self.clear_cache()
        self.compressor.refresh()

    def _params(self) -> Iterator[torch.Tensor]:
        inner = self.layout.inner
        for mod in (self.model.get_vision_tower(), inner.compressor, inner.mm_projector, inner.prefusion_layers):
            yield from mod.parameters()

    # ------------------------------------------------------------ the fused pre-fusion
    def _prefusion(self) -> FusedPreFusion:
        fp = self.fused_prefusion
        inv = self.layout.rope.inv_freq  # read now: the model may have moved since the patch
        if fp.inv_freq.device != inv.device or not torch.equal(fp.inv_freq, inv.float()):
            fp.inv_freq = inv.detach().float().clone()
        return fp

    def vision_prefix(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image (or frame) per sample, (B, parts, 3, H, W) -> (projected vision rows
        (B, Nv, hidden), projected compressed tokens (B, C*C, hidden)), as the official
        ``encode_images_mini`` builds the pre-fusion prefix (HD: re-tiled sub-images, then the
        global view; the compressor reads the re-tiled sub-image grid)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 5:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected (B, parts, 3, H, W), got {got}")
        inner, tower = self.layout.inner, self.model.get_vision_tower()
        b, parts = images.shape[:2]
        if parts == 1:
            clip = tower(images[:, 0])
            compressed, _ = inner.compressor(clip)
            return inner.mm_projector(clip), inner.mm_projector(compressed)
        ratio = math.isqrt(parts - 1)
        if ratio * ratio != parts - 1:
            raise ValueError(f"images: {parts} views per image; HD takes ratio**2 sub-images plus the global view")
        clip = tower(images.reshape(b * parts, *images.shape[2:]))
        clip = clip.reshape(b, parts, *clip.shape[1:])
        compressed, _ = inner.compressor(_retile(clip[:, :-1], ratio))
        sub = _retile(inner.mm_projector(clip[:, :-1]), ratio)
        vision = torch.cat([sub, inner.mm_projector(clip[:, -1])], dim=1)
        return vision, inner.mm_projector(compressed)

    def _text(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.model.get_input_embeddings()(input_ids.clamp(min=0)).detach()
        ids = input_ids * (labels == IGNORE_INDEX).int() if labels is not None else input_ids
        return text, ids <= 0

    def _cached_prefix(self, images: torch.Tensor, key_tensor: torch.Tensor, text, padding):
        """(compressed, fused text) through the vision-prefix cache when it is safe to use."""
        fp = self._prefusion()
        params = list(self._params())
        recording = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if self.cache_size <= 0 or recording or key_tensor.is_inference():
            self.stats.uncacheable += 1
            return fp(*self.vision_prefix(images), text, padding)
        inv = self.layout.rope.inv_freq
        weights = tuple((id(p), p._version) for p in params)
        rope = (id(inv), None if inv.is_inference() else inv._version)
        key = (_tensor_key(key_tensor), weights, rope, fp.backend)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is key_tensor:
            self.stats.hits += 1
            self._cache.move_to_end(key)
            return fp.fuse(hit[1], text, padding)
        self.stats.misses += 1
        compressed, fused, cache = fp(*self.vision_prefix(images), text, padding, return_cache=True)
        # copies: the slices would pin every row of the last activations, the text's included
        cache = PrefusionCache(
            [k.contiguous() for k in cache.keys], [v.contiguous() for v in cache.values], cache.compressed.contiguous()
        )
        # entries of a dead tensor, or of older parameter versions, can never hit again
        for k in [k for k, v in self._cache.items() if v[0]() is None or k[1:] != key[1:]]:
            del self._cache[k]
        self._cache[key] = (weakref.ref(key_tensor), cache)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return compressed, fused

    def encode_image(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        key_tensor: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official ``encode_images_mini`` of an image batch (B, parts, 3, H, W) on the fused
        path -> (compressed tokens after pre-fusion (B, C*C, hidden), fused text (B, L, hidden)).
        ``key_tensor`` (default ``images``) is the tensor the prefix cache is keyed on."""
        text, padding = self._text(input_ids, labels)
        return self._cached_prefix(images, images if key_tensor is None else key_tensor, text, padding)

    def encode_video(
        self, video: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A video (B, T, parts, 3, H, W) in batched chunks of frames -> (every frame's
        compressed tokens in frame order (B, T*C*C, hidden), the float32 mean of the fused text
        over frames cast back (B, L, hidden)), as the official per-frame loop."""
        if not isinstance(video, torch.Tensor) or video.dim() != 6 or video.shape[1] < 1:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"images: expected a video (B, T >= 1, parts, 3, H, W), got {got}")
        text, padding = self._text(input_ids, labels)
        step = self.video_chunk_frames or VIDEO_CHUNK_FRAMES.get(video.device.type, VIDEO_CHUNK_FRAMES["cpu"])

        def prefixes():
            for t in range(0, video.shape[1], step):
                chunk = video[:, t : t + step]
                vision, compressed = self.vision_prefix(chunk.flatten(0, 1))
                yield vision.unflatten(0, chunk.shape[:2]), compressed.unflatten(0, chunk.shape[:2])

        tokens, total, frames = self._prefusion().fuse_video_sum(prefixes(), text, padding)
        return tokens, (total / frames).to(text.dtype)

    def _features(self, input_ids, labels, images):
        """The official dispatch of ``prepare_inputs_labels_for_multimodal`` over image inputs."""
        if isinstance(images, list):
            image_features, text_features = [], []
            for i, image in enumerate(images):
                ids, lab = input_ids[i : i + 1], None if labels is None else labels[i : i + 1]
                if image.dim() == 5:  # one sample's video (T, parts, 3, H, W)
                    tokens, text = self.encode_video(image.unsqueeze(0), ids, lab)
                else:
                    tokens, text = self.encode_image(image.unsqueeze(0), ids, lab, key_tensor=image)
                image_features.append(tokens.squeeze(0))
                text_features.append(text.squeeze(0))
            return image_features, text_features
        if images.dim() == 6:  # the official video branch: no graph, then leaves that require grad
            with torch.no_grad():
                tokens, text = self.encode_video(images, input_ids, labels)
            return tokens.requires_grad_(), text.requires_grad_()
        return self.encode_image(images, input_ids, labels)

    def _fallback(self) -> bool:
        # attention dropout in training: FusedPreFusion has none, so the official code runs
        return self.model.training and self.layout.attention_dropout > 0


def _patched_encode_images_mini(self, images, input_ids, labels=None, modal="image"):
    handle: LlavaMiniPatch = self.__dict__[_HANDLE]
    if modal == "video":  # the official method does nothing for it either
        return None
    if handle._fallback():
        return type(self).encode_images_mini(self, images, input_ids, labels, modal)
    return handle.encode_image(images, input_ids, labels)


def _patched_prepare(self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None):
    handle: LlavaMiniPatch = self.__dict__[_HANDLE]
    if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
        return input_ids, position_ids, attention_mask, past_key_values, None, labels
    if handle._fallback():
        return type(self).prepare_inputs_labels_for_multimodal(
            self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
        )
    image_features, text_features = handle._features(input_ids, labels, images)
    config = self.config
    if getattr(config, "tune_mm_mlp_adapter", False) and getattr(config, "mm_use_im_start_end", False):
        raise NotImplementedError("image start/end tokens with tune_mm_mlp_adapter (not in the official code either)")
    return _splice(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, image_features, text_features
    )


def _splice(model, input_ids, position_ids, attention_mask, past_key_values, labels, image_features, text_features):
    """The official splice of vision tokens into the text features, for the LLM.

    As officially: a missing mask means every position; labels default to IGNORE_INDEX (and are
    then returned, never None); position ids are returned only when given. Per sample the
    masked-out positions are dropped, each placeholder is replaced by the next image's tokens (a
    sample without one still consumes an image slot), the text pieces are sliced from the
    *unmasked* text features at the *masked* indices (exact for right padding, the official
    behaviour for left), sequences are cut to ``config.tokenizer_model_max_length`` and padded
    with zeros on ``config.tokenizer_padding_side`` (default right).
    """
    given_positions = position_ids
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if position_ids is None:
        position_ids = torch.arange(0, input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    embeds, new_labels, image_idx = [], [], 0
    for b in range(input_ids.shape[0]):
        ids, lab, text = input_ids[b][mask[b]], labels[b][mask[b]], text_features[b]
        places = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
        if not places:
            embeds.append(torch.cat([text[mask[b]], image_features[image_idx][0:0]], dim=0))
            new_labels.append(lab)
            image_idx += 1
            continue
        bounds = [-1, *places, ids.shape[0]]
        pieces, piece_labels = [], []
        for i in range(len(bounds) - 1):
            pieces.append(text[bounds[i] + 1 : bounds[i + 1]])
            piece_labels.append(lab[bounds[i] + 1 : bounds[i + 1]])
            if i < len(places):
                tokens = image_features[image_idx]
                image_idx += 1
                pieces.append(tokens)
                piece_labels.append(torch.full((tokens.shape[0],), IGNORE_INDEX, device=lab.device, dtype=lab.dtype))
        embeds.append(torch.cat([p.to(model.device) for p in pieces]))
        new_labels.append(torch.cat(piece_labels))
    limit = getattr(model.config, "tokenizer_model_max_length", None)
    if limit is not None:
        embeds, new_labels = [e[:limit] for e in embeds], [x[:limit] for x in new_labels]
    longest, batch = max(e.shape[0] for e in embeds), len(embeds)
    left = getattr(model.config, "tokenizer_padding_side", "right") == "left"
    out = embeds[0].new_zeros(batch, longest, embeds[0].shape[1])
    out_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=new_labels[0].dtype, device=new_labels[0].device)
    out_mask = torch.zeros((batch, longest), dtype=mask.dtype, device=mask.device)
    out_pos = torch.zeros((batch, longest), dtype=position_ids.dtype, device=position_ids.device)
    for b, (e, lab) in enumerate(zip(embeds, new_labels, strict=True)):
        n = e.shape[0]
        rows = slice(longest - n, longest) if left else slice(0, n)
        out[b, rows] = e
        if n > 0:
            out_labels[b, rows] = lab
            out_mask[b, rows] = True
            out_pos[b, rows] = torch.arange(0, n, dtype=position_ids.dtype, device=position_ids.device)
    return None, (None if given_positions is None else out_pos), out_mask, past_key_values, out, out_labels


def _undo(model: nn.Module, inner: nn.Module, original_compressor: nn.Module, saved: dict[str, Any]) -> None:
    inner.compressor = original_compressor
    for name, value in saved.items():
        if value is _MISSING:
            model.__dict__.pop(name, None)
        else:
            model.__dict__[name] = value


def apply_lmini_kernels_to_llava_mini(
    model: nn.Module,
    *,
    backend: str = "auto",
    freeze_compressor: bool = True,
    prefix_cache_size: int = 4,
    video_chunk_frames: int | None = None,
    _steps: tuple[Callable[..., None], ...] = (),
) -> LlavaMiniPatch:
    """Patch one instance of the official ``LlavaMiniLlamaForCausalLM`` in place (module docstring).

    Args:
        model: the official model (found by structure: ``get_model().compressor``,
            ``.prefusion_layers``, ``.mm_projector``, ``get_vision_tower()``, the config fields),
            with its weights already loaded.
        backend: backend of :func:`lmini_kernels.prefusion_attention` in the pre-fusion.
        freeze_compressor: cache the compressor's parameter-only work
            (:meth:`FusedResampler.freeze`; invalidated by version counters, bypassed in training).
        prefix_cache_size: image tensors whose prefixes are kept (least recently used dropped; 0 disables). One
            entry holds every pre-fusion layer's K and V of the prefix: at LLaVA-Mini-7B shapes
            in fp16 about 38 MB per image (577 rows x 4 layers x 2 x 4096 x 2 bytes).
        video_chunk_frames: frames per batched pre-fusion chunk (default 16 on CUDA, 4 on CPU).

    Returns:
        the :class:`LlavaMiniPatch` handle (``.revert()``); the same handle if this instance is
        already patched.

    Raises:
        UnsupportedModelError (a TypeError): the model lacks a piece the patch needs, or has one
            it cannot serve exactly; the message names the model's class and the piece. Nothing
            is changed then: a failure while applying rolls back what was done.
        ValueError: a bad option.
    """
    if isinstance(prefix_cache_size, bool) or not isinstance(prefix_cache_size, int) or prefix_cache_size < 0:
        raise ValueError(f"prefix_cache_size: expected an int >= 0, got {prefix_cache_size!r}")
    if video_chunk_frames is not None and (
        isinstance(video_chunk_frames, bool) or not isinstance(video_chunk_frames, int) or video_chunk_frames < 1
    ):
        raise ValueError(f"video_chunk_frames: expected None or an int >= 1, got {video_chunk_frames!r}")
    existing = getattr(model, "__dict__", {}).get(_HANDLE)
    if isinstance(existing, LlavaMiniPatch) and existing.active:
        return existing
    layout = _inspect(model)
    inner = layout.inner
    original = inner.compressor
    saved = {name: model.__dict__.get(name, _MISSING) for name in (*_METHODS, _HANDLE)}
    try:
        fused = FusedResampler.from_module(original, share=True)
        if freeze_compressor:
            fused.freeze()
        fused.train(original.training)
        inner.compressor = fused
        prefusion = FusedPreFusion.from_layers(
            inner.prefusion_layers,
            num_heads=layout.num_heads,
            num_kv_heads=layout.num_kv_heads,
            rms_norm_eps=layout.rms_norm_eps,
            inv_freq=layout.rope.inv_freq,
            backend=backend,
        )
        handle = LlavaMiniPatch(model, layout, fused, original, prefusion, prefix_cache_size, video_chunk_frames, saved)
        for step in _steps:  # test hook: a step that fails mid-way must leave the model as it was
            step(model)
        model.__dict__["encode_images_mini"] = types.MethodType(_patched_encode_images_mini, model)
        model.__dict__["prepare_inputs_labels_for_multimodal"] = types.MethodType(_patched_prepare, model)
        model.__dict__[_HANDLE] = handle
    except BaseException:
        _undo(model, inner, original, saved)
        raise
    return handle


def revert_lmini_kernels(model: nn.Module) -> None:
    """Undo :func:`apply_lmini_kernels_to_llava_mini` on ``model`` (the handle's ``revert``).

    Raises:
        ValueError: ``model`` is not patched.
    """
    handle = getattr(model, "__dict__", {}).get(_HANDLE)
    if not isinstance(handle, LlavaMiniPatch) or not handle.active:
        raise ValueError(f"model: this {type(model).__name__} is not patched by apply_lmini_kernels_to_llava_mini")
    handle.revert()
