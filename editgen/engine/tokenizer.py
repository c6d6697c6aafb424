"""Text tokenizer for the T5 encoder (torch-free, over the `tokenizers` library).

Two sources of a tokenizer:
- `TextTokenizer.from_file(".../tokenizer.json")`: the file Hugging Face checkpoints ship
  (facebook/musicgen-* write T5TokenizerFast's tokenizer.json).
- `build_preset_tokenizer()`: a small T5-like tokenizer for `random:<preset>` models,
  loaded from `data/preset_tokenizer.json`, which ships with the package. That file was
  trained once by `tokenizer_build.train_preset_tokenizer()` on `data/preset_corpus.txt`; regenerate it
  with `python -m editgen.model.tokenizer_build` (a test checks the two agree). Shipping the
  file rather than training at import keeps every token id fixed across `tokenizers`
  versions.

Words are whitespace-separated (`split_words`). Punctuation is not split off: it stays part
of its word ("jazz," is one word whose pieces are "▁jazz" and ","). Edit specs match words
with `editgen.engine.edit.words.word_key`, which ignores case and surrounding punctuation;
a named part of a word ("funk" in "funk-infused") is located by `TokenizedPrompt.span_tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from editgen.errors import CheckpointError, InvalidRequestError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in T5
PRESET_TOKENIZER_FILE = Path(__file__).parent / "data" / "preset_tokenizer.json"
_WORD = re.compile(r"\S+")


def split_words(text: str) -> tuple[str, ...]:
    """The words of a prompt: maximal runs of non-whitespace, punctuation included."""
    return tuple(m.group() for m in _WORD.finditer(text))


def word_spans(text: str) -> tuple[tuple[int, int], ...]:
    """[start, end) character span of each word of `split_words(text)`."""
    return tuple(m.span() for m in _WORD.finditer(text))


@functools.lru_cache(maxsize=1)
def build_preset_tokenizer() -> Tokenizer:
    """The preset tokenizer shipped in `data/preset_tokenizer.json`. Cached: callers must
    not mutate the result."""
    return Tokenizer.from_file(str(PRESET_TOKENIZER_FILE))


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedPrompt:
    """One prompt padded to T tokens. Arrays are read-only."""

    text: str
    ids: np.ndarray  # int64 [T], pad id after `length`
    mask: np.ndarray  # int64 [T], 1 on the `length` real tokens
    length: int  # real tokens, `</s>` included
    pieces: tuple[str, ...]  # [length] token strings
    word_of_token: tuple[int | None, ...]  # [length] word index; None for special tokens
    words: tuple[str, ...]  # whitespace words, normalized as the tokenizer does (lower-case)
    offsets: tuple[tuple[int, int], ...]  # [length] each token's characters in `text`, as the tokenizer gives them
    decoded: tuple[str, ...]  # [length] each id decoded alone ("▁bass" -> "bass", "</s>" -> "</s>")

    def word_tokens(self, word: int) -> tuple[int, ...]:
        """Token positions of word `word`, in order."""
        return tuple(t for t, w in enumerate(self.word_of_token) if w == word)

    def span_tokens(self, word: int, start: int, end: int) -> tuple[int, ...] | None:
        """The tokens of word `word` that make up exactly the characters [start, end) of
        `text`, in order; None when a token crosses start or end (the tokenizer does not
        split the word there). A piece that is only the space mark "▁" goes with the piece
        after it, so a span at the start of a word gets the word's "▁" as a whole word does.

        A token's characters: its offsets less the space a "▁" piece's offsets may include.
        """
        inside: list[int] = []
        pending: list[int] = []  # "▁" pieces waiting for the piece they mark
        covered = 0
        for t in self.word_tokens(word):
            if self.pieces[t] == "▁":
                pending.append(t)
                continue
            lo, hi = self.offsets[t]
            while lo < hi and self.text[lo].isspace():
                lo += 1
            if start <= lo and hi <= end:
                inside += pending + [t]
                covered += hi - lo
            elif lo < end and hi > start:
                return None  # crosses a boundary of the span
            pending = []
        return tuple(inside) if inside and covered == end - start else None


# Code points no text field takes: unpaired UTF-16 surrogates (JSON's "\ud800" decodes to
# one; the tokenizer cannot encode it as UTF-8), NUL, and Unicode's 66 noncharacters
# (U+FDD0..U+FDEF and the last two of every plane), which no text is meant to contain.
_BAD_CODE_POINT = re.compile("[\x00\ud800-\udfff\ufdd0-\ufdef" + "".join(
    f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17)) + "]")


def text_problem(text: str) -> str | None:
    """What makes `text` unfit for a text field (the first bad code point and where),
    or None."""
    bad = _BAD_CODE_POINT.search(text)
    if bad is None:
        return None
    point = ord(bad.group())
    what = ("an unpaired UTF-16 surrogate" if 0xD800 <= point <= 0xDFFF
            else "a NUL character" if point == 0 else "a Unicode noncharacter")
    return f"contains {what} (U+{point:04X}) at character {bad.start()}: send plain Unicode text"


def check_text(text: str, name: str) -> None:
    """An InvalidRequestError naming `name` if `text` holds a code point text_problem refuses."""
    problem = text_problem(text)
    if problem is not None:
        raise InvalidRequestError(f"{name} {problem}")


def check_prompt(prompt: str, name: str = "prompt") -> None:
    """The checks that need no tokenizer, so callers can run them before a model loads."""
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"{name} must be text, got {type(prompt).__name__}")
    check_text(prompt, name)
    if not prompt.strip():
        raise InvalidRequestError(f"{name} is empty: give a text description")


class TextTokenizer:
    """Encodes prompts to fixed-length [T] ids; T = ModelShapes.max_text_tokens."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = 64):
        if max_tokens < 2:
            raise ValueError(f"max_tokens is {max_tokens}, must be at least 2")
        if tokenizer.padding is not None or tokenizer.truncation is not None:
            # Padding/truncation are ours to do (fixed T, clear error when too long);
            # copy first so a shared tokenizer is not changed under other users.
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self._tok = tokenizer
        self.max_tokens = max_tokens
        pad = tokenizer.token_to_id(PAD)
        self.pad_id = 0 if pad is None else pad

    @classmethod
    def from_file(cls, path: str | Path, max_tokens: int = 64) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer file {str(path)!r} is missing: "
                                  "the checkpoint needs its tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on bad JSON
            raise CheckpointError(f"tokenizer file {str(path)!r} cannot be read: {exc}") from exc
        return cls(tok, max_tokens)

    @classmethod
    def preset(cls, max_tokens: int = 64) -> "TextTokenizer":
        return cls(build_preset_tokenizer(), max_tokens)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tok

    def normalize(self, text: str) -> str:
        norm = self._tok.normalizer
        return text if norm is None else norm.normalize_str(text)

    def encode(self, prompt: str) -> TokenizedPrompt:
        check_prompt(prompt)
        enc = self._tok.encode(prompt)
        n = len(enc.ids)
        if n > self.max_tokens:
            raise InvalidRequestError(f"prompt is {n} tokens, the model takes at most "
                                      f"{self.max_tokens}: shorten it")
        ids = np.full(self.max_tokens, self.pad_id, dtype=np.int64)
        ids[:n] = enc.ids
        mask = np.zeros(self.max_tokens, dtype=np.int64)
        mask[:n] = 1
        ids.flags.writeable = False
        mask.flags.writeable = False
        words = split_words(prompt)
        return TokenizedPrompt(
            text=prompt, ids=ids, mask=mask, length=n, pieces=tuple(enc.tokens),
            word_of_token=_word_of_token(prompt, enc.offsets, enc.special_tokens_mask),
            words=tuple(self.normalize(w) for w in words), offsets=tuple(enc.offsets),
            decoded=tuple(self._tok.decode([i], skip_special_tokens=False) for i in enc.ids),
        )

    def unknown_words(self, prompt: str) -> tuple[str, ...]:
        """Words of `prompt` with a piece the vocabulary lacks (encoded as <unk>), in order."""
        unk = self._tok.token_to_id(UNK)
        if unk is None:
            return ()
        enc = self._tok.encode(prompt)
        word_of = _word_of_token(prompt, enc.offsets, enc.special_tokens_mask)
        bad = sorted({w for i, w in zip(enc.ids, word_of) if i == unk and w is not None})
        words = split_words(prompt)
        return tuple(words[w] for w in bad)

    def encode_batch(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids, mask: int64 [n, T]."""
        encoded = [self.encode(p) for p in prompts]
        return (np.stack([e.ids for e in encoded]).astype(np.int64),
                np.stack([e.mask for e in encoded]).astype(np.int64))


def _word_of_token(text: str, offsets, special) -> tuple[int | None, ...]:
    """Map tokens to whitespace words by character offsets into the original text.

    Offsets rather than `Encoding.word_ids`: word ids follow the pre-tokenizer's splits,
    which differ between tokenizer.json files; offsets work for any of them. A piece
    that is only the `▁` standing for a space (offsets empty or on the space) belongs
    to the word that follows it.
    """
    spans = word_spans(text)
    out: list[int | None] = []
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            out.append(None)
            continue
        word = next((w for w, (ws, we) in enumerate(spans) if ws < end and we > start), None)
        if word is None:  # no overlap: the next word starting at or after `start`
            word = next((w for w, (ws, _) in enumerate(spans) if ws >= start), len(spans) - 1)
        out.append(word)
    return tuple(out)

