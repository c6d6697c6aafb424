"""Soft blending of maps across decoder layers.

Per cross-attention layer i of N (i = 0 is the layer nearest the input):

    P = a_i * P_tgt + (1 - a_i) * P_inj

P_tgt is the row's own map, P_inj the injected (edited) one; a_i = 1 keeps the own map.

- `soft`:       a_i = i / N        layer 0 takes P_inj fully, the own map gains with depth
                                   (the paper's default)
- `hard`:       a_i = 0            every layer takes P_inj (plain Prompt-to-Prompt)
- `constant:x`: a_i = x            x in [0, 1]
- `reversed`:   a_i = (N-1-i) / N  soft mirrored: the last layer takes P_inj fully
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from editgen.errors import InvalidRequestError

_FORMS = "soft, hard, reversed or constant:x with x in [0, 1]"


@dataclasses.dataclass(frozen=True)
class BlendSchedule:
    kind: Literal["soft", "hard", "constant", "reversed"]
    value: float = 0.0  # x of constant:x; unused otherwise

    @classmethod
    def parse(cls, text: str) -> "BlendSchedule":
        if not isinstance(text, str):
            raise InvalidRequestError(f"blend {text!r} is not text: use {_FORMS}")
        form = text.strip().lower()
        if form in ("soft", "hard", "reversed"):
            return cls(form)
        if form.startswith("constant:"):
            raw = form.split(":", 1)[1]
            try:
                x = float(raw)
            except ValueError:
                x = math.nan
            if not 0.0 <= x <= 1.0:  # also rejects nan
                raise InvalidRequestError(f"blend {text!r}: x is {raw!r}, must be a number "
                                          "in [0, 1], e.g. constant:0.5")
            return cls("constant", x)
        raise InvalidRequestError(f"blend {text!r} is not understood: use {_FORMS}")

    def alphas(self, num_layers: int) -> np.ndarray:
        """a_i for i = 0..N-1: float32 [N]."""
        if num_layers < 1:
            raise ValueError(f"num_layers is {num_layers}, must be at least 1")
        i = np.arange(num_layers, dtype=np.float64)
        if self.kind == "soft":
            a = i / num_layers
        elif self.kind == "reversed":
            a = (num_layers - 1 - i) / num_layers
        elif self.kind == "hard":
            a = np.zeros(num_layers)
        else:
            a = np.full(num_layers, self.value)
        return a.astype(np.float32)

    def __str__(self) -> str:
        return f"constant:{self.value:g}" if self.kind == "constant" else self.kind
