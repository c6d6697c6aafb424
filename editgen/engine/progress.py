"""A progress bar when tqdm is installed and one is wanted; a no-op otherwise."""

from __future__ import annotations

import contextlib


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, *, enabled: bool, desc: str = "decoding", unit: str = "step"):
    if not enabled:
        yield _NoBar()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the runtime does not need tqdm
        yield _NoBar()
        return
    with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
        yield bar
