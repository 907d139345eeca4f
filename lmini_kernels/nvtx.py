"""NVTX ranges around public op calls and pipeline stages, switched on by ``LMINI_NVTX=1``.

Read once at import: with the variable unset, :func:`annotate` returns the function itself
(not a wrapper) and :func:`range` returns one shared no-op context manager, so there is no
cost at all when off. With ``LMINI_NVTX=1`` set before ``import lmini_kernels``:

* every public op (``compress``, ``prefusion_attention``, ``row_softmax``) pushes
  ``lmini::<op>`` around its call;
* :func:`annotate_modules` adds ``lmini.stage.<label>`` ranges through forward hooks on the
  modules a model names as its stages (the reference model: ``LlavaMini.stages()``, labels
  vit, compression, projector, prefusion.<i>, embed, llm.<i>, norm, lm_head);
* :func:`range` marks any block (``with nvtx.range("lmini.pipeline.prefill"): ...``).

Ranges go through ``torch.cuda.nvtx`` (NVTX is a no-op unless a tool such as Nsight Systems
is attached). Filter them in ``nsys stats`` / the GUI by the ``lmini`` prefix.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from lmini_kernels.env import flag

F = TypeVar("F", bound=Callable)

ENABLED = flag("LMINI_NVTX")  # read once: the decorators are applied at import

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


def annotate_modules(modules: Iterable[tuple[str, object]], *, force: bool = False) -> list:
    """Forward hooks that push an NVTX range ``lmini.stage.<label>`` around each module of
    ``modules`` ((label, nn.Module) pairs; a model describes its own stages, e.g.
    ``[(s.label, s.module) for s in llava_mini_model.stages()]``). Returns the hook handles
    (empty when ``LMINI_NVTX`` is off, unless ``force``)."""
    if not (ENABLED or force):
        return []
    handles = []
    for label, mod in modules:
        name = f"lmini.stage.{label}"
        handles.append(mod.register_forward_pre_hook(lambda *_, n=name: _push(n)))
        handles.append(mod.register_forward_hook(lambda *_: _pop()))
    return handles


__all__ = ["ENABLED", "annotate", "annotate_modules", "range"]
