"""Layer schedules of the edit: how much decoder layer i of N injects.

Cross-attention, a_i = weight of the row's OWN map (1 = no injection):

    P = a_i * P_own + (1 - a_i) * P_inj

- `soft`:       a_i = i / N        the paper's text ("deeper layers receive more original
                                   features"): layer 0 takes P_inj fully
- `hard`:       a_i = 0            every layer takes P_inj (plain Prompt-to-Prompt, and
                                   the released EditGen code)
- `reversed`:   a_i = (N-1-i) / N  soft mirrored
- `constant:x`: a_i = x
- `x0,x1,...`:  one value per layer (N values)

Self-attention, b_i = weight of the SOURCE row's map (0 = no injection):

    S = b_i * S_src + (1 - b_i) * S_own

- `off`:        b_i = 0
- `editgen`:    b_i = (2i+1) / (2N)  what the released EditGen code evaluates
- `full`:       b_i = 1
- `constant:x`, `x0,x1,...` as above.

All values lie in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from editgen.errors import InvalidRequestError

Kind = Literal["cross", "self"]
# name -> a function of (i [N] float64, N) giving the layer values
_NAMED = {
    "cross": {
        "soft": lambda i, n: i / n,
        "hard": lambda i, n: np.zeros_like(i),
        "reversed": lambda i, n: (n - 1 - i) / n,
    },
    "self": {
        "off": lambda i, n: np.zeros_like(i),
        "editgen": lambda i, n: (2 * i + 1) / (2 * n),
        "full": lambda i, n: np.ones_like(i),
    },
}
_FLAG = {"cross": "cross blend", "self": "self blend"}


def _forms(kind: Kind) -> str:
    return f"{', '.join(_NAMED[kind])}, constant:x or one value per layer x0,x1,... (x in [0, 1])"


@dataclasses.dataclass(frozen=True)
class LayerSchedule:
    """A parsed schedule: a named form, constant:x, or explicit per-layer values."""

    kind: Kind
    form: str  # a name of _NAMED[kind], "constant" or "values"
    values: tuple[float, ...] = ()  # (x,) for constant; every layer's value for "values"

    @classmethod
    def parse(cls, text: str, kind: Kind) -> "LayerSchedule":
        what = _FLAG[kind]
        if not isinstance(text, str):
            raise InvalidRequestError(f"{what} {text!r} is not text: use {_forms(kind)}")
        form = text.strip().lower()
        if form in _NAMED[kind]:
            return cls(kind, form)
        if form.startswith("constant:"):
            return cls(kind, "constant", (_unit(form.split(":", 1)[1], text, what),))
        if "," in form or _is_number(form):
            return cls(kind, "values", tuple(_unit(x, text, what) for x in form.split(",")))
        raise InvalidRequestError(f"{what} {text!r} is not understood: use {_forms(kind)}")

    def layer_values(self, num_layers: int) -> np.ndarray:
        """The schedule's value for layers 0..N-1: float32 [N]."""
        if num_layers < 1:
            raise ValueError(f"num_layers is {num_layers}, must be at least 1")
        if self.form == "values":
            if len(self.values) != num_layers:
                raise InvalidRequestError(
                    f"{_FLAG[self.kind]} {self} gives {len(self.values)} values, this model has "
                    f"{num_layers} decoder layers: give one value per layer")
            return np.asarray(self.values, dtype=np.float32)
        if self.form == "constant":
            return np.full(num_layers, self.values[0], dtype=np.float32)
        i = np.arange(num_layers, dtype=np.float64)
        return _NAMED[self.kind][self.form](i, num_layers).astype(np.float32)

    @property
    def injects(self) -> bool:
        """Whether some layer injects (cross: some a_i < 1; self: some b_i > 0), for any N."""
        if self.form in ("constant", "values"):
            return any((v < 1.0) if self.kind == "cross" else (v > 0.0) for v in self.values)
        return self.form != "off"

    def __str__(self) -> str:
        # repr, not :g: EditSpec stores this text and parses it again (6 digits would round a_i).
        if self.form == "constant":
            return f"constant:{self.values[0]!r}"
        if self.form == "values":
            return ",".join(repr(v) for v in self.values)
        return self.form


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unit(raw: str, text: str, what: str) -> float:
    try:
        x = float(raw)
    except ValueError:
        x = math.nan
    if not 0.0 <= x <= 1.0:  # also rejects nan
        raise InvalidRequestError(f"{what} {text!r}: {raw.strip()!r} must be a number in [0, 1], "
                                  "e.g. constant:0.5")
    return x
