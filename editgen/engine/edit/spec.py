"""EditSpec: what the user asked to edit, validated on creation (no tokenizer needed)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import string
from types import MappingProxyType
from typing import Literal, Mapping

from editgen.engine.edit.blend import BlendSchedule
from editgen.engine.tokenizer import check_prompt, split_words
from editgen.errors import InvalidRequestError

OPS = ("replace", "refine", "reweight")
WEIGHT_MIN, WEIGHT_MAX = -2.0, 2.0
DEFAULT_WINDOW = "default"  # the windows key for tokens not named (and `</s>`, pads)


def word_key(word: str) -> str:
    """How a named word matches a prompt word: case-insensitive, surrounding punctuation
    ignored ("Guitar," matches "guitar"); inner punctuation kept ("hi-hats")."""
    return word.lower().strip(string.punctuation)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EditSpec:
    """One edit of `source` into `target`.

    op: replace (same word count, words swapped one to one), refine (words added or
        removed, aligned globally), reweight (no base edit: target is the source).
    word_weights: reweight factor c in [-2, 2] per target word, with any op.
    windows: fraction of the steps, in [0, 1], during which the edit is injected;
        key "default" plus optional target words ({"default": 1.0, "guitar": 0.4}).
    blend: layer schedule, see BlendSchedule.
    Mappings are stored read-only with keys as `word_key` gives them.
    """

    source: str
    target: str | None = None
    op: Literal["replace", "refine", "reweight"] = "replace"
    word_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    windows: Mapping[str, float] = dataclasses.field(default_factory=dict)
    blend: str = "soft"

    def __post_init__(self) -> None:
        check_prompt(self.source, "source prompt")
        if self.op not in OPS:
            raise InvalidRequestError(f"op {self.op!r} is not one of {', '.join(OPS)}")
        target = self._checked_target()
        object.__setattr__(self, "target", target)
        words = tuple(dict.fromkeys(word_key(w) for w in split_words(target)))  # ordered, unique
        weights = _word_map("word_weights", self.word_weights, words, target,
                            WEIGHT_MIN, WEIGHT_MAX, allow_default=False)
        if self.op == "reweight" and not weights:
            raise InvalidRequestError("op reweight needs at least one word weight, "
                                      "e.g. piano=1.5 (c in [-2, 2])")
        windows = {DEFAULT_WINDOW: 1.0}
        windows.update(_word_map("windows", self.windows, words, target, 0.0, 1.0,
                                 allow_default=True))
        object.__setattr__(self, "word_weights", MappingProxyType(weights))
        object.__setattr__(self, "windows", MappingProxyType(windows))
        BlendSchedule.parse(self.blend)  # raises on a bad form

    def _checked_target(self) -> str:
        target = self.target
        if target is not None and not isinstance(target, str):
            raise InvalidRequestError(f"target must be text, got {type(target).__name__}")
        if target is None or not target.strip():
            if self.op != "reweight":
                raise InvalidRequestError(f"op {self.op} needs a target prompt: give the "
                                          "edited description")
            return self.source
        if self.op == "reweight" and split_words(target) != split_words(self.source):
            raise InvalidRequestError(
                f"op reweight keeps the prompt, but target {target!r} differs from source "
                f"{self.source!r}: leave the target out, or use --op replace or refine")
        # Reweight: the source text itself, so both tokenize identically (identity mapper).
        return self.source if self.op == "reweight" else target

    @property
    def blend_schedule(self) -> BlendSchedule:
        return BlendSchedule.parse(self.blend)


def _word_map(name: str, given: Mapping[str, float], words: tuple[str, ...], target: str,
              lo: float, hi: float, *, allow_default: bool) -> dict[str, float]:
    """Validate {word: value}: each word in the target, each value a number in [lo, hi]."""
    if not isinstance(given, Mapping):
        raise InvalidRequestError(f"{name} must be a mapping of word to number, "
                                  f"got {type(given).__name__}")
    out: dict[str, float] = {}
    for raw, value in given.items():
        key = word_key(str(raw))
        if key not in words and not (allow_default and key == DEFAULT_WINDOW):
            raise InvalidRequestError(
                f"{name}: word {raw!r} is not in the target prompt {target!r} "
                f"(words: {', '.join(words)}): name one of them")
        if key in out:
            raise InvalidRequestError(f"{name}: word {raw!r} is named twice")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidRequestError(f"{name}[{raw!r}] is {value!r}, must be a number "
                                      f"in [{lo:g}, {hi:g}]")
        value = float(value)
        if not (math.isfinite(value) and lo <= value <= hi):
            # repr, not :g: 2.0000001 must not print as "2" next to "must be in [-2, 2]".
            raise InvalidRequestError(f"{name}[{raw!r}] is {value!r}, must be in "
                                      f"[{lo:g}, {hi:g}]: pick a value in that range")
        out[key] = value
    return out
