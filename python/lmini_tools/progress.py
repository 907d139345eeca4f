"""Progress on stderr for the tools' runs longer than a few seconds (benchmarks, profiles).

A tqdm bar when tqdm is installed (the ``progress`` extra) and stderr is a terminal; otherwise
one plain line per step, so that logs and CI output stay readable and nothing is needed.
stdout stays for results (tables, JSON).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _bar_available() -> bool:
    if not sys.stderr.isatty():
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def steps(items: Iterable[T], desc: str, *, label=str) -> Iterator[T]:
    """Yield ``items``, reporting each step on stderr (``label(item)`` names it)."""
    items = list(items)
    if _bar_available():
        from tqdm import tqdm

        bar = tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        for item in bar:
            bar.set_postfix_str(label(item))
            yield item
        return
    t0 = time.perf_counter()
    for i, item in enumerate(items, 1):
        print(
            f"{desc} [{i}/{len(items)}] {label(item)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True
        )
        yield item
