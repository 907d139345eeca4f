"""Argument types and checks shared by every ``lmini`` subcommand.

A user's mistake raises :class:`UsageError` (or an ``argparse`` error at parse time); the
``lmini`` command turns either into one line on stderr and exit status 2 (a traceback only
with ``--debug``). Nothing here imports torch: ``lmini --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


class UsageError(Exception):
    """A mistake in what the user asked for; the message names the argument."""


def add_model_options(
    parser: argparse.ArgumentParser, *, device: str = "auto", device_help: str = "auto: cuda if present, else cpu"
) -> None:
    """The ``--backend``, ``--device`` and ``--dtype`` options of every subcommand that runs the model."""
    parser.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="backend of compress / pre-fusion attention"
    )
    parser.add_argument("--device", default=device, choices=DEVICES, help=device_help)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text}")
    return v


def resolve_device(name: str, arg: str = "--device") -> str:
    """ "auto" -> "cuda" when a GPU is present, else "cpu"; "cuda" without a GPU is a UsageError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{arg} cuda: no CUDA GPU here (torch.cuda.is_available() is False); use {arg} cpu")
    if name not in DEVICES:
        raise UsageError(f"{arg}: expected one of {', '.join(DEVICES)}, got {name!r}")
    return name


def writable_dir(path: str | os.PathLike, arg: str = "--out") -> Path:
    """The folder ``path``, created if needed and proven writable now (before any measurement)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".lmini-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"{arg} {out}: cannot write there ({exc.strerror or exc})") from None
    return out
