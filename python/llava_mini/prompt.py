"""Tokenizer and prompt of a LLaVA-Mini checkpoint folder, in the official formats.

- :func:`load_tokenizer`: the folder's tokenizer through ``transformers.AutoTokenizer``, local
  files only (never the hub).
- :data:`CONV_TEMPLATES`: the official conversation templates ``vicuna_v1`` (LLaVA-Mini
  Vicuna-7B), ``llava_v1`` (the same format with LLaVA's "human" system line) and
  ``llava_llama_3_1`` (LLaVA-Mini LLaMA-3.1-8B), as in the official ``conversation.py``;
  :func:`build_prompt` renders a one-question prompt as the official ``run_llava_mini.py``
  does (``<image>\\n`` put in front of the question unless it holds ``<image-placeholder>``;
  with ``mm_use_im_start_end`` the image token is ``<im_start><image><im_end>``; the assistant
  turn left open).
- :func:`tokenizer_image_token`: the official ``mm_utils.tokenizer_image_token``: the prompt is
  split on ``<image>``, each piece tokenized on its own, the placeholder id
  :data:`IMAGE_TOKEN_INDEX` (-200) put between them, and one BOS kept in front.
- :func:`eos_token_ids`: every end-of-sequence id (Llama 3.1 has three).

Needs ``transformers`` (``pip install 'lmini-kernels[chat]'``), imported when first used.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import IMAGE_TOKEN_INDEX, read_json_file

__all__ = [
    "CONV_TEMPLATES",
    "ConversationTemplate",
    "IMAGE_TOKEN",
    "IMAGE_PLACEHOLDER",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "build_prompt",
    "default_template",
    "eos_token_ids",
    "load_tokenizer",
    "tokenizer_image_token",
]

#: The placeholder of the image (or video) in the prompt text (official ``DEFAULT_IMAGE_TOKEN``).
IMAGE_TOKEN = "<image>"
#: Where a user's question asks for the image to go (official ``IMAGE_PLACEHOLDER``).
IMAGE_PLACEHOLDER = "<image-placeholder>"
#: What wraps the image token in the prompt of a model with ``mm_use_im_start_end`` (official
#: ``DEFAULT_IM_START_TOKEN`` / ``DEFAULT_IM_END_TOKEN``).
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
#: Files of which one must be in a folder for its tokenizer to load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class ConversationTemplate:
    """One official conversation template. ``style`` "two": ``system + sep``, then per turn
    ``role + ": " + message`` followed by ``sep`` / ``sep2`` in turn, an open turn as
    ``role + ":"`` (official ``SeparatorStyle.TWO``); "chat_template": the tokenizer's own chat
    template over ``[system, user]`` messages, without a generation prompt (official
    ``SeparatorStyle.LLAMA_3_1``). ``stop_str``: the text that ends an answer."""

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str = ""
    sep2: str = ""
    stop_str: str | None = None


_VICUNA_V1 = ConversationTemplate(
    name="vicuna_v1",
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    style="two",
    sep=" ",
    sep2="</s>",
    stop_str="</s>",
)

CONV_TEMPLATES: dict[str, ConversationTemplate] = {
    "vicuna_v1": _VICUNA_V1,
    # LLaVA's v1 template: Vicuna's format, the system line speaking of a "human"
    "llava_v1": dataclasses.replace(
        _VICUNA_V1,
        name="llava_v1",
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    ),
    "llava_llama_3_1": ConversationTemplate(
        name="llava_llama_3_1",
        system="You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language.",
        roles=("user", "assistant"),
        style="chat_template",
        stop_str="<|eot_id|>",
    ),
}


def load_tokenizer(folder: str | os.PathLike) -> Any:
    """The tokenizer of a checkpoint folder (``transformers.AutoTokenizer``, ``local_files_only``;
    the folder's ``config.json`` is not consulted: transformers cannot read a ``llava_llama``
    one, so the Llama tokenizer classes are the fallback when ``tokenizer_config.json`` names
    none). A folder without ``tokenizer_config.json`` and one of :data:`TOKENIZER_FILES`, or a
    tokenizer that fails to load, is a ValueError naming the folder and the files."""
    d = Path(folder)
    if not d.is_dir():
        raise ValueError(f"checkpoint folder {str(d)!r}: not a directory")
    have = [f for f in TOKENIZER_FILES if (d / f).is_file()]
    if not have or not (d / "tokenizer_config.json").is_file():
        raise ValueError(
            f"checkpoint folder {str(d)!r}: no tokenizer files (expected tokenizer_config.json and one of "
            f"{', '.join(TOKENIZER_FILES)})"
        )
    from transformers import AutoTokenizer, LlamaConfig

    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True, config=LlamaConfig())
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        files = ", ".join(have)
        raise ValueError(f"checkpoint folder {str(d)!r}: the tokenizer ({files}) does not load: {e}") from None


def default_template(tokenizer: Any) -> str:
    """``llava_llama_3_1`` for a tokenizer with Llama 3's ``<|eot_id|>`` token, else ``vicuna_v1``."""
    return "llava_llama_3_1" if "<|eot_id|>" in tokenizer.get_vocab() else "vicuna_v1"


def _template(name: str) -> ConversationTemplate:
    if name not in CONV_TEMPLATES:
        raise ValueError(f"template: expected one of {', '.join(CONV_TEMPLATES)}, got {name!r}")
    return CONV_TEMPLATES[name]


def build_prompt(
    question: str, template: str, *, tokenizer: Any = None, image: bool = True, im_start_end: bool = False
) -> str:
    """The prompt text of one question, as the official ``run_llava_mini.py`` builds it.

    With ``image`` (an image or a video goes with the question): ``<image-placeholder>`` in the
    question becomes ``<image>``; a question without it gets ``<image>\\n`` in front;
    ``im_start_end`` (the config's ``mm_use_im_start_end``) makes that image token
    ``<im_start><image><im_end>``: the two are text of the prompt, tokenized as the checkpoint's
    tokenizer has them (a model trained with them added them as tokens), the image still spliced
    at ``<image>``. Without ``image`` a question holding a placeholder is a ValueError. Then the
    template (:data:`CONV_TEMPLATES`): ``vicuna_v1`` and ``llava_v1`` give
    ``"{system} USER: {question} ASSISTANT:"`` (each its own system line); ``llava_llama_3_1``
    the ``tokenizer``'s chat template over the system and user messages
    (``add_generation_prompt=False``, as officially), so it needs the tokenizer."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question: expected a non-empty string, got {question!r}")
    if not isinstance(im_start_end, bool):
        raise ValueError(f"im_start_end: expected a bool (mm_use_im_start_end), got {im_start_end!r}")
    tpl = _template(template)
    if image:
        token = IM_START_TOKEN + IMAGE_TOKEN + IM_END_TOKEN if im_start_end else IMAGE_TOKEN
        if IMAGE_PLACEHOLDER in question:
            question = question.replace(IMAGE_PLACEHOLDER, token)
        else:
            question = token + "\n" + question
    elif IMAGE_TOKEN in question or IMAGE_PLACEHOLDER in question:
        raise ValueError(f"question: holds an image placeholder ({IMAGE_TOKEN!r}) but no image or video is given")
    if tpl.style == "two":
        user, assistant = tpl.roles
        return f"{tpl.system}{tpl.sep}{user}: {question}{tpl.sep}{assistant}:"  # the user turn ends with sep
    if tokenizer is None:
        raise ValueError(f"tokenizer: the {tpl.name} template needs the tokenizer (for its chat template)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer: the {tpl.name} template needs the tokenizer's chat_template (tokenizer_config.json "
            "'chat_template' or chat_template.jinja), and this tokenizer has none"
        )
    messages = [{"role": "system", "content": tpl.system}, {"role": tpl.roles[0], "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def tokenizer_image_token(prompt: str, tokenizer: Any, *, image: bool = True) -> list[int]:
    """Token ids of ``prompt`` with the image placeholder id (:data:`IMAGE_TOKEN_INDEX`) where
    ``<image>`` stands, as the official ``tokenizer_image_token``: each piece between
    placeholders is tokenized alone; when the first piece starts with the tokenizer's BOS,
    that BOS is kept once in front and every piece's first id is dropped (the BOS each piece
    got). ``image``: whether an image or a video goes with the prompt; then exactly one
    ``<image>`` is required, else none (a ValueError either way)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
    count = prompt.count(IMAGE_TOKEN)
    if image and count != 1:
        raise ValueError(
            f"prompt: an image or video is given, so exactly one {IMAGE_TOKEN!r} placeholder is expected, found {count}"
        )
    if not image and count:
        raise ValueError(f"prompt: holds {count} {IMAGE_TOKEN!r} placeholder(s) but no image or video is given")
    pieces = [list(tokenizer(p).input_ids) for p in prompt.split(IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    offset = int(bos is not None and len(pieces[0]) > 0 and pieces[0][0] == bos)
    ids: list[int] = [bos] if offset else []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(piece[offset:])
    return ids


def _ids_field(value: object, where: str) -> list[int]:
    ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{where}: eos_token_id: expected an id or a list of ids, got {value!r}")
    return ids


def eos_token_ids(folder: str | os.PathLike, tokenizer: Any = None) -> list[int]:
    """Every id that ends an answer: ``generation_config.json``'s ``eos_token_id`` (an id or a
    list: Llama 3.1 lists ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``), else
    ``config.json``'s, then the ``tokenizer``'s ``eos_token_id``; duplicates dropped, order
    kept. A bad field is a ValueError naming the file."""
    d = Path(folder)
    ids: list[int] = []
    for fname in ("generation_config.json", "config.json"):
        path = d / fname
        if not path.is_file():
            continue
        doc = read_json_file(path)
        if isinstance(doc, dict) and doc.get("eos_token_id") is not None:
            ids = _ids_field(doc["eos_token_id"], str(path))
            break
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(ids))
