"""NVTX ranges around public op calls and pipeline stages, switched on by ``LMINI_NVTX=1``.

Read once at import: with the variable unset, :func:`annotate` returns the function itself
(not a wrapper) and :func:`range` returns one shared no-op context manager, so there is no
cost at all when off. With ``LMINI_NVTX=1`` set before ``import lmini_kernels``:

* every public op (``compress``, ``prefusion_attention``, ``row_softmax``) pushes
  ``lmini::<op>`` around its call;
* :func:`annotate_model` adds ``lmini.stage.<stage>`` ranges (vit, compression, projector,
  prefusion.<i>, llm.<i>, lm_head) through forward hooks on a LLaVA-Mini model's modules;
* :func:`range` marks any block (``with nvtx.range("lmini.pipeline.prefill"): ...``).

Ranges go through ``torch.cuda.nvtx`` (NVTX is a no-op unless a tool such as Nsight Systems
is attached). Filter them in ``nsys stats`` / the GUI by the ``lmini`` prefix.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable)

ENABLED = os.environ.get("LMINI_NVTX", "0") == "1"

_NULL = contextlib.nullcontext()


def _push(name: str) -> None:
    import torch

    torch.cuda.nvtx.range_push(name)


def _pop() -> None:
    import torch

    torch.cuda.nvtx.range_pop()


def annotate(name: str) -> Callable[[F], F]:
    """Decorator: an NVTX range ``name`` around every call when ``LMINI_NVTX=1`` (else the
    function is returned unchanged)."""

    def deco(fn: F) -> F:
        if not ENABLED:
            return fn

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            _push(name)
            try:
                return fn(*args, **kwargs)
            finally:
                _pop()

        wrapper.__lmini_nvtx__ = name  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco


@contextlib.contextmanager
def _range(name: str) -> Iterator[None]:
    _push(name)
    try:
        yield
    finally:
        _pop()


def range(name: str):  # noqa: A001 - mirrors torch.cuda.nvtx.range
    """Context manager: an NVTX range around the block when ``LMINI_NVTX=1``, else a no-op."""
    return _range(name) if ENABLED else _NULL


#: Component modules of a LLaVA-Mini model (``model.<attr>``) and their stage names.
MODEL_STAGES = {
    "vision_tower": "vit",
    "compressor": "compression",
    "mm_projector": "projector",
    "prefusion_layers": "prefusion",
    "layers": "llm",
}


def annotate_model(model, *, force: bool = False) -> list:
    """Forward hooks that push ``lmini.stage.<stage>`` ranges around the model's components
    (``prefusion.<i>``/``llm.<i>`` per layer, plus ``lm_head``). Returns the hook handles
    (empty when ``LMINI_NVTX`` is off, unless ``force``)."""
    if not (ENABLED or force):
        return []
    from torch import nn

    inner = getattr(model, "model", model)
    targets: list[tuple[str, nn.Module]] = []
    for attr, stage in MODEL_STAGES.items():
        mod = getattr(inner, attr, None)
        if mod is None:
            continue
        if isinstance(mod, nn.ModuleList):
            targets += [(f"{stage}.{i}", m) for i, m in enumerate(mod)]
        else:
            targets.append((stage, mod))
    if getattr(model, "lm_head", None) is not None:
        targets.append(("lm_head", model.lm_head))
    handles = []
    for stage, mod in targets:
        name = f"lmini.stage.{stage}"
        handles.append(mod.register_forward_pre_hook(lambda *_, n=name: _push(n)))
        handles.append(mod.register_forward_hook(lambda *_: _pop()))
    return handles


__all__ = ["ENABLED", "annotate", "annotate_model", "range", "MODEL_STAGES"]
