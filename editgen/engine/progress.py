"""Progress bars, optional: tqdm comes with the `cli` extra, and an embedded runtime
does not need it. Without tqdm the loop runs the same, silently (the CLI says once
that there is no bar, see editgen.cli.common)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def progress(items: Iterable[T], *, enabled: bool, desc: str, unit: str, leave: bool = False) -> Iterable[T]:
    """`items`, wrapped in a tqdm bar on stderr when `enabled` and tqdm is installed."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit=unit, leave=leave, file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, *, enabled: bool, desc: str = "decoding", unit: str = "step"):
    """A bar over `total` units, updated by the caller (`bar.update(n)`); a no-op bar
    when not `enabled` or without tqdm."""
    if not enabled:
        yield _NoBar()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield _NoBar()
        return
    with tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr) as bar:
        yield bar
