"""Progress bars, optional: tqdm comes with the `cli` extra, and the runtime does not
need it (the engine core reports steps to StepObservers, one of which is the CLI's bar).
Without tqdm the loop runs the same, silently (the CLI says once that there is no bar,
see editgen.cli.common)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, TypeVar

from editgen.engine.core import StepObserver

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
    n = total = 0

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


class StepProgress(StepObserver):
    """The CLI's bar over one request's decoder steps (an engine core running it alone)."""

    def __init__(self, enabled: bool, desc: str = "decoding"):
        self.enabled, self.desc, self._bar = enabled, desc, None

    def after_step(self, batch, outputs, seconds, requests) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            total = max(r.steps for r in requests)
            self._bar = self._open(total)
        self._bar.update(1)
        if self._bar.n >= self._bar.total:
            self.close()

    def _open(self, total: int):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.enabled = False
            return _NoBar()
        return tqdm(total=total, desc=self.desc, unit="step", leave=False, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None and hasattr(self._bar, "close"):
            self._bar.close()
        self._bar = None


def step_progress(args) -> list[StepObserver]:
    """The observers of a CLI command's run: its progress bar unless --no-progress."""
    return [StepProgress(enabled=not args.no_progress)]
