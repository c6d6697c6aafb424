"""Named edit settings, mapper kinds, step windows and reweight modes, each as its source defines it.

Settings (what a user picks with `--setting`; the schedules are in blend.py, the mappers in
alignment.py and released_mappers.py):

- `editgen-code` (default): the released EditGen code's Replace and Refine (mapper
  `editgen-code`), cross-attention injected fully at every layer (`hard`), the source's
  self-attention blended in with b_i = (2i+1)/(2N) (`editgen`). This is what the paper's
  released code (EditGen on GitHub, hooking transformers' MusicGen attention) runs for the
  evaluation, i.e. what produced the paper's Table 1. Default because it is the setting
  that reproduces the paper's numbers.
- `paper-text`: Prompt-to-Prompt's mappers (`p2p`), cross-attention blended with a_i = i/N
  (`soft`), no self-injection: the paper's text ("Z = aX + (1 - a)Y, a = i/N, deeper
  layers receive more original features"). This was editgen's default before; the
  released code does not run it.
- `hard`: Prompt-to-Prompt's mappers, cross-attention injected fully, no self-injection:
  plain Prompt-to-Prompt.

Mapper kinds (which target columns come from the source, and how; docs/design.md has the
formulas): `p2p`, Prompt-to-Prompt's seq_aligner (every real target column from the
source); `editgen-code`, the released code's operators (Replace: only the changed words'
columns, each the mean of the source word's pieces; Refine: the columns whose decoded token
equals a source token's, special tokens excluded). Reweight is the same under both.

Windows follow Prompt-to-Prompt's own code. A window is (start, end) as fractions of the
request's N steps; a bare f means (0, f).
- cross-attention, per word (`get_time_words_attention_alpha`, an alpha array of N + 1
  steps): step t injects iff floor(start (N+1)) <= t < floor(end (N+1));
- self-attention (`AttentionControlEdit.num_self_replace`): floor(start N) <= t < floor(end N).

Reweight modes:
- `p2p` (default): Prompt-to-Prompt's equalizer, the word's columns multiplied by c.
- `editgen-code`: the released EditGen code, which divides every other column (`</s>` and
  pads included) by c: P2P's result scaled by 1/c (1/prod(c) for several words); c = 0 is
  undefined there.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import numpy as np

from editgen.errors import InvalidRequestError

Window = tuple[float, float]  # (start, end) fractions of the steps, 0 <= start <= end <= 1
FULL_WINDOW: Window = (0.0, 1.0)


MAPPERS = ("p2p", "editgen-code")
REWEIGHT_MODES = ("p2p", "editgen-code")


@dataclasses.dataclass(frozen=True)
class EditSetting:
    name: str
    mapper: str  # one of MAPPERS
    cross_blend: str  # blend.py form, kind "cross"
    self_blend: str  # blend.py form, kind "self"
    origin: str  # where it comes from, one line


SETTINGS = {s.name: s for s in (
    EditSetting("editgen-code", "editgen-code", "hard", "editgen",
                "the released EditGen code: its Replace and Refine, hard cross-attention, "
                "self-attention b_i = (2i+1)/(2N)"),
    EditSetting("paper-text", "p2p", "soft", "off",
                "the paper's text: Prompt-to-Prompt's mappers, cross-attention a_i = i/N, no self-attention injection"),
    EditSetting("hard", "p2p", "hard", "off",
                "Prompt-to-Prompt: its mappers, hard cross-attention, no self-attention injection"),
)}
DEFAULT_SETTING = "editgen-code"


def setting_named(name: str) -> EditSetting:
    if not isinstance(name, str) or name.strip().lower() not in SETTINGS:
        raise InvalidRequestError(f"setting {name!r} is not one of {', '.join(SETTINGS)}")
    return SETTINGS[name.strip().lower()]


def parse_window(value, what: str) -> Window:
    """f, "f", (start, end) or "start:end" -> (start, end), each in [0, 1], start <= end."""
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) > 2:
            raise InvalidRequestError(f"{what} is {value!r}: give F or START:END, e.g. 0.4 or 0.1:0.6")
        bounds = [_number(p, what, value) for p in parts]
    elif isinstance(value, Sequence):
        bounds = [_number(p, what, value) for p in value]
        if len(bounds) != 2:
            raise InvalidRequestError(f"{what} is {list(value)!r}: give one fraction or [start, end]")
    else:
        bounds = [_number(value, what, value)]
    start, end = (0.0, bounds[0]) if len(bounds) == 1 else bounds
    if not (0.0 <= start <= end <= 1.0):
        raise InvalidRequestError(f"{what} is {value!r}: need 0 <= start <= end <= 1 "
                                  "(fractions of the steps, in [0, 1]), e.g. 0.4 or 0.1:0.6")
    return (start, end)


def window_text(window: Window) -> str:
    start, end = window
    return f"{end:g}" if start == 0.0 else f"{start:g}:{end:g}"


def cross_window_steps(bounds: np.ndarray, num_steps: int) -> np.ndarray:
    """bounds float64 [..., 2] -> int64 [..., 2]: steps [lo, hi) of Prompt-to-Prompt's cross window."""
    return np.floor(bounds * (num_steps + 1)).astype(np.int64)


def self_window_steps(bounds: np.ndarray, num_steps: int) -> np.ndarray:
    """bounds float64 [..., 2] -> int64 [..., 2]: steps [lo, hi) of Prompt-to-Prompt's self window."""
    return np.floor(bounds * num_steps).astype(np.int64)


def reweight_factors(weights: np.ndarray, named: Sequence[float], mode: str) -> np.ndarray:
    """Column factors float32 [T] of a reweight: `weights` holds c on the named words' tokens
    and 1 elsewhere; `named` the c of each named word."""
    if mode == "p2p" or not named:
        return weights
    # editgen-code: every column but the word's divided by c, word by word.
    return (weights / np.prod(np.asarray(named, dtype=np.float64))).astype(np.float32)


def _number(raw, what: str, value) -> float:
    if isinstance(raw, bool):
        raw = math.nan
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raw = math.nan
    if not isinstance(raw, numbers.Real) or not math.isfinite(float(raw)):
        raise InvalidRequestError(f"{what} is {value!r}: give F or START:END with numbers in [0, 1]")
    return float(raw)
