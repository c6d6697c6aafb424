"""RowLayout: which decoder row of a request is which, by name.

A request's rows are its conditional rows in a fixed order, then, with classifier-free
guidance, the same rows again with null text: the null row of conditional row i is
rows_cond + i. The job that builds a request names its rows once here; the edit tensors,
the engine core, teacher forcing, streaming and results read rows by name."""

from __future__ import annotations

import dataclasses

SOURCE = "source"


def target_name(i: int) -> str:
    """The name of the i-th target (0-based) of an edit: target_1, target_2, ..."""
    return f"target_{i + 1}"


@dataclasses.dataclass(frozen=True)
class RowLayout:
    names: tuple[str, ...]  # conditional rows, in batch order
    cfg: bool  # classifier-free guidance: the null-text rows follow

    def __post_init__(self):
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"row names must be distinct and at least one: {self.names}")

    @classmethod
    def generation(cls, prompts: int, *, cfg: bool) -> "RowLayout":
        """Plain generation: prompt_1..prompt_n."""
        return cls(tuple(f"prompt_{i + 1}" for i in range(prompts)), cfg)

    @classmethod
    def edit(cls, targets: int, *, cfg: bool, with_source: bool = True) -> "RowLayout":
        """An edit: source (unless its maps were captured), then target_1..target_n."""
        return cls(((SOURCE,) if with_source else ()) + tuple(target_name(i) for i in range(targets)), cfg)

    @property
    def rows_cond(self) -> int:
        return len(self.names)

    @property
    def rows(self) -> int:
        return 2 * self.rows_cond if self.cfg else self.rows_cond

    def index(self, name: str) -> int:
        """The conditional row called `name`."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no row {name!r} in this request (rows: {', '.join(self.names)})") from None

    def null_index(self, name: str) -> int:
        """The null-text row of `name` (itself without guidance)."""
        return self.index(name) + (self.rows_cond if self.cfg else 0)

    @property
    def source(self) -> int | None:
        """The source row, or None (plain generation, or an edit from captured maps)."""
        return self.names.index(SOURCE) if SOURCE in self.names else None

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(i for i, name in enumerate(self.names) if name.startswith("target_"))
