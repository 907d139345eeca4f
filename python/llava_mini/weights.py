"""Load and save LLaVA-Mini weights as local ``.safetensors`` files (no hub access).

Keys are the official checkpoint names (``model.compressor.*``, ``model.prefusion_layers.N.*``,
``model.mm_projector.*``, ``model.vision_tower.vision_tower.vision_model.*``,
``model.layers.N.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``lm_head.*``). Loading is
strict: any missing or unexpected key, or a shape mismatch, raises :class:`WeightLoadError`
naming them. Derived buffers that some Hugging Face versions saved (CLIP
``embeddings.position_ids``, LLaMA ``rotary_emb.inv_freq``) are ignored when present.

No file is trusted. Which files make the checkpoint follows the Hugging Face convention:
``model.safetensors.index.json`` when present (valid JSON, a ``weight_map`` of key -> shard
file name; every shard a regular file directly inside the folder, no ``..`` or absolute
paths; every key of every shard named by the index exactly once), else ``model.safetensors``,
else the folder's only ``*.safetensors`` file (several without an index is an error). Files
are read into memory (no memory map: a checkpoint rewritten or truncated later cannot change
or kill the running model) unless ``mmap=True`` is asked for. Tensors must be floating point.
Every error is a :class:`CheckpointError` (a ValueError) naming the file and, where one is
at fault, the key.

The official release layout keeps the CLIP vision tower out of the checkpoint: its weights are
in the folder ``mm_vision_tower`` names (the official ``CLIPVisionTower.load_model``:
``CLIPVisionModel.from_pretrained(mm_vision_tower)``). :func:`load_weights` with
``vision_tower=`` reads them from there (:func:`read_vision_tower`: ``vision_model.*`` keys of a
``CLIPVisionModel`` or a full ``CLIPModel`` folder, under the same file rules) when the
checkpoint has no ``model.vision_tower.*`` key; a checkpoint that has them keeps its own.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "WeightLoadError",
    "checkpoint_files",
    "read_checkpoint",
    "read_vision_tower",
    "load_weights",
    "save_weights",
]

#: Checkpoint keys that are derived from the config and silently skipped.
IGNORED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_LIST_LIMIT = 20
#: Where the checkpoint keeps the CLIP tower: the official ``CLIPVisionTower`` wraps a
#: ``CLIPVisionModel`` as ``vision_tower``, under ``model.vision_tower``.
VISION_PREFIX = "model.vision_tower."
TOWER_PREFIX = VISION_PREFIX + "vision_tower."
#: Key prefixes of a full ``CLIPModel`` folder besides ``vision_model.``: the text half, which
#: ``CLIPVisionModel.from_pretrained`` leaves out too.
_CLIP_TEXT_PREFIXES = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
#: The modules of ``vision_model``: transformers 5 saves a ``CLIPVisionModel`` under these names
#: without the ``vision_model.`` prefix that transformers 4 (and the hub's CLIP folders) write.
_CLIP_VISION_MODULES = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read as a checkpoint; names the file (and key)."""


class WeightLoadError(CheckpointError):
    """Checkpoint and model disagree; ``missing``, ``unexpected`` and ``mismatched`` list why."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        where: Mapping[str, str] | None = None,
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        where = where or {}

        def named(k: str) -> str:
            return f"{k} ({where[k]})" if k in where else k

        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
            if keys:
                shown = ", ".join(named(k) for k in keys[:_LIST_LIMIT]) + (
                    f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
                )
                parts.append(f"{len(keys)} {title}: {shown}")
        for key, want, got in mismatched:
            parts.append(f"shape mismatch for {named(key)}: model has {list(want)}, checkpoint has {list(got)}")
        super().__init__("cannot load checkpoint: " + "; ".join(parts))


def _regular_file_inside(directory: Path, name: object, what: str) -> Path:
    """``directory / name`` when ``name`` is a plain file name of a regular file directly in
    ``directory`` (symlinks resolved and still inside), else a CheckpointError."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CheckpointError(f"{what}: {name!r} is not a plain file name inside {directory}")
    path = directory / name
    try:
        real = path.resolve(strict=True)
        mode = os.stat(real).st_mode
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{what}: {path} does not exist or cannot be read ({exc})") from None
    if real.parent != directory.resolve():
        raise CheckpointError(f"{what}: {path} leads outside {directory} (to {real})")
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{what}: {path} is not a regular file")
    return path


def checkpoint_files(directory: str | Path) -> tuple[list[Path], dict[str, str] | None]:
    """The files that make the checkpoint in ``directory`` and, with an index, its weight map
    (key -> shard file name). See the module docstring for the rules."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder {directory} does not exist or is not a folder")
    index_path = directory / INDEX_NAME
    if index_path.exists() or index_path.is_symlink():
        _regular_file_inside(directory, INDEX_NAME, "index")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{index_path}: not valid JSON ({exc})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: expected an object with a non-empty 'weight_map' of key -> file")
        for key, name in weight_map.items():
            if not isinstance(name, str):
                raise CheckpointError(f"{index_path}: key {key}: expected a shard file name, got {name!r}")
        names = sorted(set(weight_map.values()))
        return [_regular_file_inside(directory, n, f"{index_path}: shard") for n in names], dict(weight_map)
    if (directory / SINGLE_NAME).exists() or (directory / SINGLE_NAME).is_symlink():
        return [_regular_file_inside(directory, SINGLE_NAME, "checkpoint")], None
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {directory}")
    if len(files) > 1:
        raise CheckpointError(
            f"{directory}: {len(files)} .safetensors files ({', '.join(files[:_LIST_LIMIT])}) but no {INDEX_NAME} "
            "saying which make the checkpoint"
        )
    return [_regular_file_inside(directory, files[0], "checkpoint")], None


def _read_file(path: Path, mmap: bool) -> dict[str, torch.Tensor]:
    try:
        if mmap:
            with safe_open(str(path), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}
        # O_NONBLOCK: a file swapped for a FIFO after the checks cannot hang the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise CheckpointError(f"{path} is not a regular file")
            data = fh.read()
        return load_safetensors_bytes(data)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_checkpoint(directory: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``directory`` (see :func:`checkpoint_files`), each
    owning its memory unless ``mmap``."""
    return _read_with_sources(directory, mmap)[0]


def _read_with_sources(directory: str | Path, mmap: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`read_checkpoint`'s tensors and, for the error messages, key -> file name."""
    directory = Path(directory)
    files, weight_map = checkpoint_files(directory)
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for f in files:
        for key, t in _read_file(f, mmap).items():
            if key in out:
                raise CheckpointError(f"{f}: key {key} is also in {source[key]}")
            if weight_map is not None and weight_map.get(key) != f.name:
                raise CheckpointError(
                    f"{f}: key {key} is not assigned to this file by {INDEX_NAME}"
                    + (f" (it names {weight_map[key]})" if key in weight_map else "")
                )
            if not t.is_floating_point() and not key.endswith(IGNORED_SUFFIXES):
                raise CheckpointError(f"{f}: key {key}: expected a floating-point tensor, got {t.dtype}")
            out[key], source[key] = t, f.name
    if weight_map is not None:
        absent = sorted(k for k in weight_map if k not in out)
        if absent:
            raise CheckpointError(
                f"{directory / INDEX_NAME}: {len(absent)} keys named by the index are not in their shard: "
                + ", ".join(f"{k} ({weight_map[k]})" for k in absent[:_LIST_LIMIT])
            )
    return out, source


def read_vision_tower(directory: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The CLIP vision tower's tensors in a local tower folder (``CLIPVisionModel`` or full
    ``CLIPModel`` safetensors, the file rules of :func:`checkpoint_files`) under the checkpoint's
    names: ``vision_model.X`` becomes ``model.vision_tower.vision_tower.vision_model.X``, as
    does ``X`` alone (transformers 5 saves a ``CLIPVisionModel`` without the ``vision_model.``
    prefix); a ``CLIPModel``'s text half is left out; any other key keeps its name under the same
    prefix (so that loading names it as unexpected). Both spellings of one key in a folder are a
    CheckpointError."""
    return _read_tower_with_sources(Path(directory), mmap)[0]


def _read_tower_with_sources(directory: Path, mmap: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    found, names = _read_with_sources(directory, mmap)
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for key, t in found.items():
        if key.startswith(_CLIP_TEXT_PREFIXES):
            continue
        ours = TOWER_PREFIX + ("vision_model." + key if key.startswith(_CLIP_VISION_MODULES) else key)
        if ours in out:
            raise CheckpointError(
                f"{directory}: keys {spelled[ours]} ({source[ours]}) and {key} ({directory / names[key]}) are the "
                "same tower weight"
            )
        out[ours], source[ours], spelled[ours] = t, str(directory / names[key]), key
    return out, source


def _add_vision_tower(
    found: dict[str, torch.Tensor],
    source: dict[str, str],
    directory: Path,
    vision_tower: str | Path | None,
    mmap: bool,
) -> str | None:
    """Put the tower folder's weights into ``found`` when the checkpoint has no vision tower key;
    returns the tower folder used (None: the checkpoint's own). Missing everywhere: one
    CheckpointError naming both places."""
    if any(k.startswith(VISION_PREFIX) for k in found):
        return None
    where = f"no vision tower weights: the checkpoint {directory} has no {VISION_PREFIX}* keys"
    if vision_tower is None:
        raise CheckpointError(
            f"{where}, and the config names no local vision tower folder (mm_vision_tower is a hub name or absent; "
            "LlavaMiniConfig.from_hf_config(..., vision_tower=DIR) or lmini chat --vision-tower DIR names one)"
        )
    tower = Path(vision_tower)
    if not tower.is_dir():
        raise CheckpointError(f"{where}, and the vision tower folder {tower} (mm_vision_tower) does not exist")
    if not any(tower.glob("*.safetensors")):
        hint = (
            " (its pytorch_model.bin is not read: only safetensors are)"
            if (tower / "pytorch_model.bin").exists()
            else ""
        )
        raise CheckpointError(
            f"{where}, and the vision tower folder {tower} (mm_vision_tower) has no .safetensors files{hint}"
        )
    tensors, names = _read_tower_with_sources(tower, mmap)
    found.update(tensors)
    source.update(names)
    return str(tower)


def _check(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: Mapping[str, str] | None = None
) -> None:
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    mismatched = [
        (k, tuple(expected[k].shape), tuple(found[k].shape))
        for k in sorted(expected)
        if k in found and tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise WeightLoadError(missing, unexpected, mismatched, where)


@torch.no_grad()
def load_weights(
    model: nn.Module,
    directory: str | Path,
    *,
    mmap: bool = False,
    dtype: torch.dtype | None = None,
    vision_tower: str | Path | None = None,
) -> nn.Module:
    """Load a local checkpoint directory into ``model`` strictly; returns ``model``.

    ``vision_tower``: a local CLIP folder (the config's ``mm_vision_tower``) whose weights
    (:func:`read_vision_tower`) stand in for the checkpoint's when it has no
    ``model.vision_tower.*`` key (the official release layout); in their own dtype they take
    the checkpoint's (a CLIP folder in float32 beside a float16 checkpoint, as released).

    Tensors are copied into the existing parameters (cast to their dtype and device). A model
    built on the ``meta`` device gets the checkpoint tensors assigned instead (on CPU, cast to
    ``dtype`` if given, else in their own dtype: then a checkpoint that mixes floating dtypes
    is refused, naming two keys), and its
    non-persistent buffers are rebuilt on CPU. ``mmap``: see :func:`read_checkpoint` (with a
    meta model the parameters then stay mapped onto the files; documented, not the default).
    """
    found, source = _read_with_sources(directory, mmap)
    tower = _add_vision_tower(found, source, Path(directory), vision_tower, mmap)
    found = {k: v for k, v in found.items() if not k.endswith(IGNORED_SUFFIXES)}
    expected = model.state_dict()
    _check(expected, found, source)
    on_meta = any(t.is_meta for t in expected.values())
    if on_meta and dtype is not None:
        found = {k: v.to(dtype) for k, v in found.items()}
    elif on_meta:
        dtypes: dict[torch.dtype, str] = {}
        for k, v in found.items():
            if tower is None or not k.startswith(VISION_PREFIX):
                dtypes.setdefault(v.dtype, k)
        if tower is not None and len(dtypes) == 1:
            (own,) = dtypes
            found = {k: v.to(own) if k.startswith(VISION_PREFIX) else v for k, v in found.items()}
        if len(dtypes) > 1:
            (d0, k0), (d1, k1) = list(dtypes.items())[:2]
            raise CheckpointError(
                f"{Path(directory)}: the checkpoint mixes dtypes ({k0} ({source[k0]}) is {d0}, {k1} ({source[k1]}) "
                f"is {d1}); pass dtype= to choose one"
            )
    model.load_state_dict(found, strict=True, assign=on_meta)
    if on_meta and hasattr(model, "materialize_buffers"):
        model.materialize_buffers(torch.device("cpu"))
    return model


def _stale_checkpoint_files(directory: Path, keep: set[str]) -> list[Path]:
    """Checkpoint files of an earlier save (the index, shards, single file) not in ``keep``."""
    names = {INDEX_NAME, SINGLE_NAME} | {p.name for p in directory.glob("model-*-of-*.safetensors")}
    return [directory / n for n in sorted(names - keep) if (directory / n).is_file()]


def save_weights(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    directory: str | Path,
    *,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Write the state dict as ``model.safetensors`` or, above ``max_shard_bytes``, as HF-style
    shards ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.

    Atomic per file: everything is written to temporary files in ``directory`` first (flushed
    to disk), then renamed into place, shards before the index; then the checkpoint files of an
    earlier save that this one does not use (another shard count, a single file, an index) are
    removed. A reader never sees a half-written file; a crash before the renames leaves the
    earlier checkpoint untouched (and only ``.tmp-*`` files to delete)."""
    if max_shard_bytes is not None and (
        isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1
    ):
        raise ValueError(f"max_shard_bytes: expected a positive int or None, got {max_shard_bytes!r}")
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
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    staged: list[tuple[Path, Path]] = []
    try:
        for name, shard in zip(names, shards, strict=True):
            staged.append((_write_temp(directory, name, lambda p, s=shard: save_file(s, p, metadata={"format": "pt"})),
                           directory / name))  # fmt: skip
        if len(shards) > 1:
            total = sum(v.numel() * v.element_size() for v in state.values())
            weight_map = {k: name for name, shard in zip(names, shards, strict=True) for k in shard}
            text = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            staged.append(
                (_write_temp(directory, INDEX_NAME, lambda p: Path(p).write_text(text)), directory / INDEX_NAME)
            )
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    for stale in _stale_checkpoint_files(directory, {final.name for _, final in staged}):
        stale.unlink(missing_ok=True)
    return [directory / n for n in names]


def _write_temp(directory: Path, name: str, write) -> Path:
    """A temporary file beside ``directory / name`` written by ``write(path)`` and flushed to disk."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{name}-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)
