"""EditSpec: what the user asked to edit, validated on creation (no tokenizer needed)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from types import MappingProxyType
from typing import Literal, Mapping

from editgen.engine.edit.blend import LayerSchedule
from editgen.engine.edit.settings import (DEFAULT_SETTING, FULL_WINDOW, MAPPERS, REWEIGHT_MODES, SETTINGS, Window,
                                          parse_window, setting_named)
from editgen.engine.edit.words import PART_RULE, named_spans, word_key
from editgen.engine.request_fields import option
from editgen.engine.tokenizer import check_prompt, split_words
from editgen.errors import InvalidRequestError

OPS = ("replace", "refine", "reweight")
WEIGHT_MIN, WEIGHT_MAX = -2.0, 2.0
DEFAULT_WINDOW = "default"  # the windows key for tokens not named (and `</s>`, pads)
__all__ = ["DEFAULT_WINDOW", "OPS", "WEIGHT_MAX", "WEIGHT_MIN", "EditSpec", "word_key"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EditSpec:
    """One edit of `source` into `target`.

    op: replace (same word count, words swapped one to one), refine (words added or
        removed, aligned globally), reweight (no base edit: target is the source).
    word_weights: reweight factor c in [-2, 2] per target word, with any op. A word may be
        a part of a target word: a hyphen part or its start ("funk" in "funk-infused";
        words.py), where the tokenizer splits the word (checked by compile_edit).
    windows: steps during which a word's cross-attention edit is injected, as Prompt-to-
        Prompt's windows (settings.py): a fraction f (= 0:f) or (start, end) / "start:end";
        key "default" plus optional target words or word parts ({"default": 1.0, "guitar": "0.2:0.6"}).
    setting: a named setting (settings.SETTINGS): the mapper and the cross and self layer schedules.
    mapper: override the setting's mapper kind (settings.MAPPERS): "p2p" (Prompt-to-Prompt's
        seq_aligner) or "editgen-code" (the released EditGen code's Replace and Refine).
    cross_blend, self_blend: override the setting's schedules (blend.py forms).
    self_window: steps of self-attention injection, as windows (default: all).
    reweight_mode: "p2p" (multiply the word's columns by c) or "editgen-code" (divide the
        other columns by c, as the released code).
    Mappings are stored read-only with keys as `word_key` gives them; after creation
    mapper, cross_blend, self_blend and self_window hold the resolved values.
    """

    source: str = option(kind="text", help="source prompt (with a capture: the captured one by default; with "
                                          "audio: a description of the audio)")
    target: str | None = option(None, kind="text", help="edited prompt (optional for op reweight)")
    op: Literal["replace", "refine", "reweight"] = option(
        "replace", kind="choice", choices=OPS,
        help="replace: same word count, words swapped; refine: words added/removed; reweight: same prompt, "
             "word weights")
    word_weights: Mapping[str, float] = option(
        {}, kind="word_numbers", item="word", metavar="WORD=C",
        help="reweight target word WORD by C in [-2, 2] (repeatable); WORD may be a part of a word where the "
             "tokenizer splits it: a hyphen part or its start (funk in funk-infused)")
    windows: Mapping[str, float | str | tuple[float, float]] = option(
        {}, kind="word_windows", item="window", metavar="WORD=F|WORD=S:E",
        help="inject WORD's cross-attention edit during steps [floor(S (N+1)), floor(E (N+1))) of N, as "
             "Prompt-to-Prompt (F means 0:F); WORD may be `default` or a word part, as for --word (repeatable)")
    setting: str = option(
        DEFAULT_SETTING, kind="choice", choices=tuple(SETTINGS),
        help="editgen-code: the released code's Replace/Refine, hard cross + self-attention b_i = (2i+1)/(2N), "
             "what the paper's released code evaluates; paper-text: P2P's mappers, cross a_i = i/N, no "
             "self-injection; hard: Prompt-to-Prompt")
    cross_blend: str | None = option(
        None, kind="text", aliases=("--blend",),
        help="override the setting's cross-attention layer schedule a_i (1 keeps the own map): soft, hard, "
             "reversed, constant:X or X0,X1,... (one per layer)")
    self_blend: str | None = option(
        None, kind="text", help="override the setting's self-attention schedule b_i (weight of the source): "
                                "off, editgen, full, constant:X or X0,X1,...")
    self_window: float | str | tuple[float, float] | None = option(
        None, kind="window", metavar="F|S:E", help="self-injection steps [floor(S N), floor(E N)) (default: all)")
    reweight_mode: str = option(
        "p2p", kind="choice", choices=REWEIGHT_MODES,
        help="p2p: multiply the word's attention by C (Prompt-to-Prompt); editgen-code: divide every other "
             "column by C (the released EditGen code)")
    mapper: str | None = option(
        None, kind="choice", choices=MAPPERS,
        help="override the setting's operators: p2p (Prompt-to-Prompt's mappers: every column from the "
             "source) or editgen-code (the released code: Replace overwrites only the changed word's columns "
             "with the mean of the source word's; Refine copies the columns of equal tokens, </s> excluded)")

    def __post_init__(self) -> None:
        check_prompt(self.source, "source prompt")
        if self.op not in OPS:
            raise InvalidRequestError(f"op {self.op!r} is not one of {', '.join(OPS)}")
        target = self._checked_target()
        object.__setattr__(self, "target", target)
        words = tuple(dict.fromkeys(word_key(w) for w in split_words(target)))  # ordered, unique
        weights = _word_weights(self.word_weights, words, target)
        if self.op == "reweight" and not weights:
            raise InvalidRequestError("op reweight needs at least one word weight, "
                                      "e.g. piano=1.5 (c in [-2, 2])")
        if self.reweight_mode not in REWEIGHT_MODES:
            raise InvalidRequestError(f"reweight mode {self.reweight_mode!r} is not one of "
                                      f"{', '.join(REWEIGHT_MODES)}")
        if self.reweight_mode == "editgen-code" and 0.0 in weights.values():
            raise InvalidRequestError("reweight mode editgen-code divides by c, so c = 0 is undefined "
                                      "there: use reweight mode p2p, or c != 0")
        windows = {DEFAULT_WINDOW: FULL_WINDOW}
        windows.update(_window_map(self.windows, words, target))
        setting = setting_named(self.setting)
        mapper = setting.mapper if self.mapper is None else self.mapper
        if mapper not in MAPPERS:
            raise InvalidRequestError(f"mapper {self.mapper!r} is not one of {', '.join(MAPPERS)}")
        cross = LayerSchedule.parse(setting.cross_blend if self.cross_blend is None else self.cross_blend, "cross")
        self_ = LayerSchedule.parse(setting.self_blend if self.self_blend is None else self.self_blend, "self")
        self_window = FULL_WINDOW if self.self_window is None else parse_window(self.self_window, "self window")
        for name, value in (("word_weights", MappingProxyType(weights)), ("windows", MappingProxyType(windows)),
                            ("setting", setting.name), ("mapper", mapper), ("cross_blend", str(cross)),
                            ("self_blend", str(self_)), ("self_window", self_window)):
            object.__setattr__(self, name, value)

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
    def cross_schedule(self) -> LayerSchedule:
        return LayerSchedule.parse(self.cross_blend, "cross")

    @property
    def self_schedule(self) -> LayerSchedule:
        return LayerSchedule.parse(self.self_blend, "self")

    @property
    def injects_self(self) -> bool:
        """Whether the target rows read their source's self-attention at some step."""
        return self.self_schedule.injects and self.self_window[1] > self.self_window[0]


def _window_map(given: Mapping, words: tuple[str, ...], target: str) -> dict[str, Window]:
    """Validate {word: window}: each word in the target (or "default")."""
    if not isinstance(given, Mapping):
        raise InvalidRequestError(f"windows must be a mapping of word to window, got {type(given).__name__}")
    out: dict[str, Window] = {}
    for raw, value in given.items():
        key = _checked_key("windows", raw, words, target, allow_default=True, seen=out)
        out[key] = parse_window(value, f"windows[{raw!r}]")
    return out


def _checked_key(name: str, raw, words: tuple[str, ...], target: str, *, allow_default: bool, seen) -> str:
    key = word_key(str(raw))
    if not (allow_default and key == DEFAULT_WINDOW) and not named_spans(key, target):
        raise InvalidRequestError(
            f"{name}: word {raw!r} is not in the target prompt {target!r} "
            f"(words: {', '.join(words)}): name one of them ({PART_RULE})")
    if key in seen:
        raise InvalidRequestError(f"{name}: word {raw!r} is named twice")
    return key


def _word_weights(given: Mapping[str, float], words: tuple[str, ...], target: str) -> dict[str, float]:
    """Validate {word: c}: each word in the target, each c a number in [WEIGHT_MIN, WEIGHT_MAX]."""
    name, lo, hi = "word_weights", WEIGHT_MIN, WEIGHT_MAX
    if not isinstance(given, Mapping):
        raise InvalidRequestError(f"{name} must be a mapping of word to number, "
                                  f"got {type(given).__name__}")
    out: dict[str, float] = {}
    for raw, value in given.items():
        key = _checked_key(name, raw, words, target, allow_default=False, seen=out)
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
