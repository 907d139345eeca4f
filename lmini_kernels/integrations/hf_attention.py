"""A Hugging Face transformers attention implementation over :func:`lmini_kernels.prefusion_attention`.

After :func:`register_hf_attention`, any decoder built with ``attn_implementation="lmini"``
(``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ...) runs its attention through our op: the
prefill (full causal), the cached continuation of ``generate`` (suffix queries over the cached
prefix, the op's own shape: causal aligned to the bottom-right), GQA (the op reads kv head
``h // (Hq // Hkv)``, as transformers' ``repeat_kv``) and padding (left or right) as the op's
``key_padding_mask``.

transformers hands the attention function a 4-D mask built by the registered mask function
(``sdpa_mask``: bool, True = attend) or None. The mask is read back into the op's terms
(causal or not, plus a (B, Lk) key padding mask) and rebuilt from those terms; only when the
rebuilt mask equals the given one does the op run. Anything else (a sliding window that cuts
keys, packed sequences, a custom 4-D mask, an additive float bias, dropout > 0, value and key
head dims that differ, a position bias) goes to transformers' SDPA function, with one warning
per reason. Logit soft-capping and attention sinks are refused with a ValueError: SDPA does
not serve them either, so falling back would be silently wrong.

transformers is imported inside the functions only: ``lmini_kernels`` imports without it.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from lmini_kernels.ops.prefusion_attention import prefusion_attention
from lmini_kernels.ops.prefusion_attention.reference import visible_mask

logger = logging.getLogger(__name__)

#: the name to pass as ``attn_implementation``
ATTN_IMPLEMENTATION = "lmini"

# keyword arguments some transformers models pass that neither our op nor SDPA serves
_REFUSED_KWARGS = {"softcap": "logit soft-capping", "s_aux": "attention sinks", "sinks": "attention sinks"}

_warned: set[str] = set()

# The analysis of each mask tensor, so that the layers of one forward pass (which share one mask
# object) read it once: id -> (weakref to the mask, its version, (lq, lk), result).
_mask_cache: dict[int, tuple[weakref.ref, int, tuple[int, int], Any]] = {}
_MASK_CACHE_SIZE = 8


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning(
            "lmini attention: falling back to SDPA (%s); further calls with this reason are not logged", reason
        )


def _visible_from_mask(mask: torch.Tensor, lq: int, lk: int) -> torch.Tensor | str:
    """(Bm, Lq, Lk) bool, True = attend, from a 4-D transformers mask; or why it cannot be read."""
    if mask.dim() != 4:
        return f"attention mask of rank {mask.dim()} (expected a 4-D mask)"
    if tuple(mask.shape[-2:]) != (lq, lk):
        return f"attention mask of shape {tuple(mask.shape)} for {lq} queries over {lk} keys"
    if mask.dtype == torch.bool:
        vis = mask
    elif mask.is_floating_point():
        # an additive mask: 0 = attend, a large negative value or -inf = masked; anything else is a bias
        masked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | masked).all()):
            return "additive float attention mask with values other than 0 and -inf (a bias)"
        vis = ~masked
    else:
        return f"attention mask of dtype {mask.dtype}"
    if vis.shape[1] != 1:
        if not bool((vis == vis[:, :1]).all()):
            return "attention mask that differs between heads"
    return vis[:, 0]


def _match(vis: torch.Tensor, lq: int, n: int, causal: bool, kpm: torch.Tensor) -> bool:
    return torch.equal(visible_mask(lq, n, causal, kpm[:, :n], vis.device)[:, 0], vis[..., :n])


def _read_mask(mask: torch.Tensor, lq: int, lk: int) -> tuple[bool, torch.Tensor, int] | str:
    """(causal, key_padding_mask (Bm, Lk) True = ignore, keys to keep) that rebuild ``mask``
    exactly under the op's rules, or the reason why none does."""
    vis = _visible_from_mask(mask, lq, lk)
    if isinstance(vis, str):
        return vis
    # Causal (bottom-right) or not, the last query sees every key that is not padding.
    kpm = ~vis[:, -1, :]
    for causal in (True, False):
        if _match(vis, lq, lk, causal, kpm):
            return causal, kpm, lk
    # A static cache: the slots past the last written key are hidden from every query. Drop
    # them, so that the bottom-right alignment starts at the last real key.
    seen = vis.any(dim=1).any(dim=0)
    n = int(seen.nonzero().max()) + 1 if bool(seen.any()) else 0
    if lq <= n < lk and _match(vis, lq, n, True, kpm):
        return True, kpm, n
    return "4-D attention mask that is neither causal nor full attention over a key padding mask"


def _read_mask_cached(mask: torch.Tensor, lq: int, lk: int) -> tuple[bool, torch.Tensor, int] | str:
    hit = _mask_cache.get(id(mask))
    if hit is not None and hit[0]() is mask and hit[1] == mask._version and hit[2] == (lq, lk):
        return hit[3]
    result = _read_mask(mask, lq, lk)
    for key in [k for k, v in _mask_cache.items() if v[0]() is None]:
        del _mask_cache[key]
    if len(_mask_cache) >= _MASK_CACHE_SIZE:
        _mask_cache.pop(next(iter(_mask_cache)))
    _mask_cache[id(mask)] = (weakref.ref(mask), mask._version, (lq, lk), result)
    return result


def _op_arguments(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    is_causal: bool | None,
    kwargs: dict[str, Any],
) -> tuple[bool, torch.Tensor | None, int] | str:
    """(causal, key_padding_mask or None, keys to keep) for the op, or why SDPA must take the call."""
    for name, what in _REFUSED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(
                f"attn_implementation='lmini': {name}= ({what}) is served by neither prefusion_attention nor SDPA; "
                "use this model's 'eager' attention"
            )
    if dropout > 0:
        return "attention dropout > 0"
    if kwargs.get("position_bias") is not None:
        return "position_bias (an additive bias)"
    if value.shape[-1] != key.shape[-1]:
        return f"value head dim {value.shape[-1]} != key head dim {key.shape[-1]}"
    lq, lk = query.shape[2], key.shape[2]
    if lq > lk:
        return f"{lq} queries over {lk} keys (more queries than keys)"
    if attention_mask is None:
        # As transformers' SDPA function: without a mask, is_causal (else the module's flag)
        # decides; one query sees every key; a causal call with more keys than queries is a
        # prefill into an empty static cache (the later slots are unwritten: keep the first Lq).
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if not causal or lq == 1:
            return False, None, lk
        return True, None, lq
    if not isinstance(attention_mask, torch.Tensor):
        return f"attention mask of type {type(attention_mask).__name__}"
    read = _read_mask_cached(attention_mask, lq, lk)
    if isinstance(read, str):
        if kwargs.get("sliding_window") is not None:
            return f"sliding window of {kwargs['sliding_window']} ({read})"
        return read
    causal, kpm, n = read
    if not bool(kpm.any()):
        return causal, None, n
    return causal, kpm.expand(query.shape[0], lk).contiguous(), n


def lmini_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention function signature, computed by :func:`prefusion_attention`.

    Args:
        module: the calling attention module (its ``is_causal`` is the default causality).
        query: (B, H, Lq, D); key, value: (B, Hkv, Lk, D), H a multiple of Hkv (GQA).
        attention_mask: None or a 4-D mask (B or 1, 1 or H, Lq, Lk), bool (True = attend) or
            additive float (0 or -inf); see the module docstring for what the op serves.
        dropout: attention dropout probability; > 0 goes to SDPA.
        scaling: softmax scale (default 1/sqrt(D)).
        is_causal: overrides ``module.is_causal`` when no mask is given.
        **kwargs: the model's extra arguments; ``sliding_window`` only names the fallback
            reason (the mask carries the window), ``position_bias`` goes to SDPA,
            ``softcap`` and ``s_aux``/``sinks`` raise ValueError.

    Returns:
        (attention output (B, Lq, H, D) contiguous in query's dtype, None): no weights, as SDPA.
    """
    args = _op_arguments(module, query, key, value, attention_mask, dropout, is_causal, kwargs)
    if isinstance(args, str):
        _warn_once(args)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    causal, key_padding_mask, n = args
    k = key[:, :, :n].transpose(1, 2)
    v = value[:, :, :n].transpose(1, 2)
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask[:, :n]
    out = prefusion_attention(
        query.transpose(1, 2), k, v, causal=causal, key_padding_mask=key_padding_mask, softmax_scale=scaling
    )
    return out, None


def register_hf_attention() -> str:
    """Register ``"lmini"`` with transformers (idempotent) and return that name.

    Registers :func:`lmini_attention_forward` in ``transformers.AttentionInterface`` and
    transformers' ``sdpa_mask`` in ``AttentionMaskInterface`` (without a registered mask
    function, transformers would pass no mask at all, padding included). Then::

        model = AutoModelForCausalLM.from_config(config, attn_implementation="lmini")
        model.set_attn_implementation("lmini")  # or switch a loaded model

    Raises:
        ImportError: transformers is not installed (``pip install lmini-kernels[hf]``).
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise ImportError(
            "register_hf_attention needs transformers: pip install 'lmini-kernels[hf]' (or transformers)"
        ) from e
    AttentionInterface.register(ATTN_IMPLEMENTATION, lmini_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
