"""Checkpoints are never trusted: each hostile or lying folder gets one CheckpointError that
names the file (and the key), never a hang, a crash or a silently different model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import build, make_ids
from safetensors.torch import save_file

import llava_mini.weights as weights_mod
from llava_mini import CheckpointError, LlavaMini, LlavaMiniConfig, load_weights, save_weights


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build("tiny", seed=seed).state_dict().items()}


def _sharded(tmp_path: Path, shards: int = 3) -> Path:
    state = _state()
    total = sum(v.numel() * v.element_size() for v in state.values())
    files = save_weights(state, tmp_path, max_shard_bytes=total // shards + 1)
    assert len(files) >= 2
    return tmp_path


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _write_index(folder: Path, index: object) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _load_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_weights(build("tiny"), folder)
    return str(info.value)


def test_index_is_followed_and_stray_files_ignored(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    save_file({"junk": torch.zeros(2)}, str(folder / "stray.safetensors"))  # not named by the index
    model = load_weights(build("tiny", seed=7), folder)
    for k, v in _state().items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize(
    ("index", "words"),
    [
        ("{not json", ["model.safetensors.index.json", "not valid JSON"]),
        ([1, 2], ["weight_map"]),
        ({"weight_map": {}}, ["weight_map"]),
        ({"weight_map": {"model.norm.weight": 3}}, ["model.norm.weight", "shard file name"]),
    ],
)
def test_malformed_index_is_named(tmp_path: Path, index: object, words: list[str]) -> None:
    folder = _sharded(tmp_path)
    if isinstance(index, str):
        (folder / "model.safetensors.index.json").write_text(index)
    else:
        _write_index(folder, index)
    msg = _load_error(folder)
    for w in words:
        assert w in msg


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/dir.safetensors", "missing.safetensors"])
def test_index_naming_a_file_outside_or_absent_is_refused(tmp_path: Path, bad: str) -> None:
    folder = _sharded(tmp_path / "ckpt")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    index = _index(folder)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = bad
    _write_index(folder, index)
    msg = _load_error(folder)
    assert bad in msg or bad.split("/")[-1] in msg


def test_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    save_weights(_state(), tmp_path / "real")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(tmp_path / "real" / "model.safetensors")
    assert "leads outside" in _load_error(folder)


def test_keys_must_be_covered_once(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    index = _index(folder)
    shard_names = sorted(set(index["weight_map"].values()))
    key = next(k for k, v in index["weight_map"].items() if v == shard_names[0])
    # the index assigns a key to another shard than the one holding it
    index["weight_map"][key] = shard_names[1]
    _write_index(folder, index)
    msg = _load_error(folder)
    assert key in msg and shard_names[0] in msg
    # the index names a key that no shard holds
    index = _index(_sharded(tmp_path / "b"))
    index["weight_map"]["model.ghost.weight"] = shard_names[0]
    _write_index(tmp_path / "b", index)
    msg = _load_error(tmp_path / "b")
    assert "model.ghost.weight" in msg and "not in their shard" in msg


def test_fifo_named_safetensors_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.safetensors")
    assert "not a regular file" in _load_error(tmp_path)
    folder = _sharded(tmp_path / "s")
    name = sorted(set(_index(folder)["weight_map"].values()))[0]
    (folder / name).unlink()
    os.mkfifo(folder / name)
    assert name in _load_error(folder)


def test_several_files_without_index_are_ambiguous(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    (folder / "model.safetensors.index.json").unlink()
    msg = _load_error(folder)
    assert "index" in msg and "model-00001-of" in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "header"])
def test_corrupt_file_is_named(tmp_path: Path, damage: str) -> None:
    save_weights(_state(), tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(
        {
            "garbage": os.urandom(4096),
            "truncated": data[: len(data) // 2],
            "empty": b"",
            "header": (10**12).to_bytes(8, "little") + data[8:],
        }[damage]
    )
    assert str(f) in _load_error(tmp_path)


def test_non_floating_tensor_names_file_and_key(tmp_path: Path) -> None:
    state = _state()
    state["model.norm.weight"] = torch.ones_like(state["model.norm.weight"], dtype=torch.int32)
    save_file(state, str(tmp_path / "model.safetensors"))
    msg = _load_error(tmp_path)
    assert "model.norm.weight" in msg and "model.safetensors" in msg and "int32" in msg


def test_mixed_dtypes_on_meta_need_a_dtype(tmp_path: Path) -> None:
    state = _state()
    state["model.norm.weight"] = state["model.norm.weight"].half()
    save_file(state, str(tmp_path / "model.safetensors"))
    config = LlavaMiniConfig.from_name("tiny")
    with pytest.raises(CheckpointError, match="mixes dtypes.*pass dtype="):
        LlavaMini.from_pretrained(str(tmp_path), config)
    model = LlavaMini.from_pretrained(str(tmp_path), config, dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_loaded_parameters_own_their_memory(tmp_path: Path, gen: torch.Generator) -> None:
    """Rewriting or truncating the checkpoint after loading changes nothing in the model."""
    save_weights(_state(seed=1), tmp_path)
    config = LlavaMiniConfig.from_name("tiny")
    model = LlavaMini.from_pretrained(str(tmp_path), config, backend="reference")
    ids = make_ids(gen, 1, 6, config.text.vocab_size)
    images = torch.randn(1, config.image_parts, 3, 28, 28, generator=gen)
    with torch.no_grad():
        before = model(ids, images)
        f = tmp_path / "model.safetensors"
        with open(f, "r+b") as fh:  # rewritten in place, then truncated: an mmap would see both
            fh.seek(len(f.read_bytes()) // 2)
            fh.write(os.urandom(1024))
            fh.truncate(64)
        assert torch.equal(model(ids, images), before)


def test_resave_with_another_shard_count_leaves_no_stale_files(tmp_path: Path) -> None:
    _sharded(tmp_path, 3)
    save_weights(_state(seed=2), tmp_path)  # one file now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    load_weights(build("tiny"), tmp_path)
    state = _state(seed=3)
    total = sum(v.numel() * v.element_size() for v in state.values())
    save_weights(state, tmp_path, max_shard_bytes=total // 2 + 1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    model = load_weights(build("tiny"), tmp_path)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_failed_save_keeps_the_earlier_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_weights(_state(seed=4), tmp_path)
    calls = []

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(weights_mod, "save_file", failing)
    state = _state(seed=5)
    total = sum(v.numel() * v.element_size() for v in state.values())
    with pytest.raises(OSError, match="disk full"):
        save_weights(state, tmp_path, max_shard_bytes=total // 3 + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file, no half shard set
    model = load_weights(build("tiny"), tmp_path)
    for k, v in _state(seed=4).items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_shard_size_is_named(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="max_shard_bytes"):
        save_weights(_state(), tmp_path, max_shard_bytes=bad)


def test_missing_folder_and_file_in_place_of_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_weights(build("tiny"), tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_weights(build("tiny"), tmp_path / "file")
