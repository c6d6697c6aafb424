"""Which characters and tokens a named word (a key of word weights or windows) stands for.

A name matches, in the target prompt (case and surrounding punctuation ignored, `word_key`):
- whole words: every word whose key is the name; if there is none,
- parts of words: in every word, a run of its hyphen-separated parts ("funk" or
  "infused" in "funk-infused", "hip-hop" in "hip-hop-inspired") and its leading
  characters ("bass" in "bassline"). The released EditGen evaluation reweights such
  parts (its `get_replacement_indices` takes the pieces that spell the start of a word).

Which characters a name covers needs no tokenizer (`named_spans`: EditSpec refuses a name
that covers none). Which tokens it covers does (`named_tokens`, run by compile_edit): a
part must begin and end where the tokenizer splits the word ("bass" in "bassline" only if
the word is pieces ▁bass + line), else it is refused with the word's pieces.
"""

from __future__ import annotations

import dataclasses
import string

from editgen.engine.tokenizer import TokenizedPrompt, split_words, word_spans
from editgen.errors import InvalidRequestError

PART_RULE = "a part of a word must be a hyphen part or its start, e.g. funk in funk-infused"


def word_key(word: str) -> str:
    """How a named word matches a prompt word: case-insensitive, surrounding punctuation
    ignored ("Guitar," matches "guitar"); inner punctuation kept ("hi-hats")."""
    return word.lower().strip(string.punctuation)


@dataclasses.dataclass(frozen=True)
class NamedSpan:
    """Characters [start, end) of the prompt text that a name covers, inside word `word`."""

    word: int  # index into split_words(text)
    start: int
    end: int
    whole: bool  # the whole word (its surrounding punctuation included)


def key_span(text: str, word: int) -> tuple[int, int]:
    """[start, end) of word `word`'s key in `text`: the word less surrounding punctuation."""
    ws, we = word_spans(text)[word]
    w = text[ws:we]
    lead = len(w) - len(w.lstrip(string.punctuation))
    trail = len(w) - len(w.rstrip(string.punctuation))
    return ws + lead, max(ws + lead, we - trail)


def named_spans(name: str, text: str) -> tuple[NamedSpan, ...]:
    """Where `name` (a word_key) is in `text`: its whole words, else its word parts; () if neither."""
    words, spans = split_words(text), word_spans(text)
    whole = tuple(NamedSpan(w, *spans[w], True) for w, word in enumerate(words) if name and word_key(word) == name)
    if whole:
        return whole
    return tuple(NamedSpan(w, lo, hi, False) for w in range(len(words)) for lo, hi in _part_spans(name, text, w))


def _part_spans(name: str, text: str, word: int) -> list[tuple[int, int]]:
    """Spans of `name` as a hyphen run or a leading part of word `word` (not the whole key)."""
    start, end = key_span(text, word)
    key = text[start:end].lower()
    if not name or len(key) != end - start or len(name) >= len(key):  # lower() kept the positions
        return []
    out = [(start, start + len(name))] if key.startswith(name) else []
    bounds, at = [], 0  # [(lo, hi)] of each hyphen-separated part, within key
    for part in key.split("-"):
        bounds.append((at, at + len(part)))
        at += len(part) + 1
    for i, (lo, _) in enumerate(bounds):
        for _, hi in bounds[i:]:
            if key[lo:hi] == name and (start + lo, start + hi) not in out:
                out.append((start + lo, start + hi))
    return out


def named_tokens(what: str, raw: str, prompt: TokenizedPrompt) -> tuple[int, ...]:
    """Token positions the name `raw` covers in `prompt` (every match, in order). A part the
    tokenizer does not split at is refused, naming the word's pieces and the prompt's words."""
    tokens: list[int] = []
    for span in named_spans(word_key(raw), prompt.text):
        got = prompt.word_tokens(span.word) if span.whole else prompt.span_tokens(span.word, span.start, span.end)
        if got is None:
            ws, we = word_spans(prompt.text)[span.word]
            pieces = "|".join(prompt.pieces[t] for t in prompt.word_tokens(span.word))
            words = ", ".join(word_key(w) for w in split_words(prompt.text))
            raise InvalidRequestError(
                f"{what}: {raw!r} is part of {prompt.text[ws:we]!r}, which the tokenizer splits as {pieces}: "
                f"name a run of those pieces from the word's start or between hyphens, or a whole word "
                f"(words: {words})")
        tokens += got
    return tuple(tokens)
