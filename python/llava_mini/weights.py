"""Load and save LLaVA-Mini weights as local ``.safetensors`` files (no hub access).

Keys are the official checkpoint names (``model.compressor.*``, ``model.prefusion_layers.N.*``,
``model.mm_projector.*``, ``model.vision_tower.vision_tower.vision_model.*``,
``model.layers.N.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``lm_head.*``). Loading is
strict: any missing or unexpected key, or a shape mismatch, raises :class:`WeightLoadError`
naming them. Derived buffers that some Hugging Face versions saved (CLIP
``embeddings.position_ids``, LLaMA ``rotary_emb.inv_freq``) are ignored when present.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

__all__ = ["WeightLoadError", "read_checkpoint", "load_weights", "save_weights"]

#: Checkpoint keys that are derived from the config and silently skipped.
IGNORED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")
_LIST_LIMIT = 20


class WeightLoadError(ValueError):
    """Checkpoint and model disagree; ``missing``, ``unexpected`` and ``mismatched`` list why."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
            if keys:
                shown = ", ".join(keys[:_LIST_LIMIT]) + (
                    f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
                )
                parts.append(f"{len(keys)} {title}: {shown}")
        for key, want, got in mismatched:
            parts.append(f"shape mismatch for {key}: model has {list(want)}, checkpoint has {list(got)}")
        super().__init__("cannot load checkpoint: " + "; ".join(parts))


def read_checkpoint(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of every ``*.safetensors`` file in ``directory`` (duplicates are an error)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {directory}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                if key in out:
                    raise ValueError(f"key {key} appears in more than one file of {directory}")
                out[key] = fh.get_tensor(key)
    return out


def _check(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    mismatched = [
        (k, tuple(expected[k].shape), tuple(found[k].shape))
        for k in sorted(expected)
        if k in found and tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise WeightLoadError(missing, unexpected, mismatched)


@torch.no_grad()
def load_weights(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a local checkpoint directory into ``model`` strictly; returns ``model``.

    Tensors are copied into the existing parameters (cast to their dtype and device). A model
    built on the ``meta`` device gets the checkpoint tensors assigned instead (their dtype,
    on CPU), and its non-persistent buffers are rebuilt on CPU.
    """
    found = {k: v for k, v in read_checkpoint(directory).items() if not k.endswith(IGNORED_SUFFIXES)}
    expected = model.state_dict()
    _check(expected, found)
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(found, strict=True, assign=on_meta)
    if on_meta and hasattr(model, "materialize_buffers"):
        model.materialize_buffers(torch.device("cpu"))
    return model


def save_weights(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    directory: str | Path,
    *,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Write the state dict as ``model.safetensors`` or, above ``max_shard_bytes``, as HF-style
    shards ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        path = directory / "model.safetensors"
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = directory / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_map.update({k: path.name for k in shard})
        paths.append(path)
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths
