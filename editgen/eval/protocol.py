"""The prompt pairs of `editgen protocol`, validated on load: the shipped set
(data/protocol_pairs.json) or any file in the same format (`--pairs-file`).

The file is one JSON object with a non-empty list "pairs" (other keys, e.g. "about", are
ignored); each pair is one edit the protocol runs under every named setting:

    {"id": "instrument-01", "category": "instrument", "op": "replace",
     "source": "...", "target": "...", "target_prompt": "..."}
    {"id": "reweight-10", "category": "reweight", "op": "reweight",
     "source": "reggae-inspired drum groove ...", "word_weights": {"reggae": 1.5}}

- id (required): 1-64 of a-z, 0-9, "-", "_" (it names the audio folder), unique in the file.
- category (required): a label. The shipped categories (CATEGORY_OPS) fix their op:
  instrument, genre and mood swaps are Replace edits (equal word counts, as Replace maps
  words by position); refine pairs add words to the source (the source's words stay, in
  order); reweight pairs keep the prompt and scale words by c in [-2, 2]. Any other label
  (e.g. the paper's "Genre Fusion") takes any op.
- op (required): replace, refine or reweight.
- source (required); target (replace and refine; left out for reweight, which keeps the source).
- word_weights: {word: c}, c in [-2, 2]; required for reweight, allowed with any op. A word
  may be a part of a target word where the tokenizer splits it (a hyphen part or its
  start, "funk" in "funk-infused": editgen.engine.edit.words), as the released evaluation
  reweights.
- target_prompt: the text CLAP scores the edited audio against under `--clap-text target`
  (default: the target; for reweight the source). Under `--clap-text source` (the default,
  as the released evaluation) CLAP compares the edit with the source prompt.

The shipped pairs are ours, not the paper's: its prompts were generated with ChatGPT and
are not published as a file. Every pair is checked by building an EditSpec here (no
tokenizer); `check_tokenizer` also compiles it against a model's tokenizer (words known,
prompts within its token limit, word parts where the tokenizer splits), which
`editgen protocol` runs before the first edit.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from editgen.engine.edit import EditSpec
from editgen.engine.edit.spec import word_key
from editgen.engine.tokenizer import split_words
from editgen.errors import InvalidRequestError

PAIRS_FILE = Path(__file__).parent / "data" / "protocol_pairs.json"
CATEGORY_OPS = {"instrument": "replace", "genre": "replace", "mood": "replace",
                "refine": "refine", "reweight": "reweight"}
CATEGORIES = tuple(CATEGORY_OPS)
# The order `--pairs N` takes the shipped categories in: one of each op first, so 3 pairs
# already run Replace, Refine and Reweight; other labels follow in file order.
TURNS = ("instrument", "refine", "reweight", "genre", "mood")
# What CLAP's text score compares the edited audio with: the pair's source prompt (the
# released evaluation, Comparison.ipynb `construct_dataframe`) or its target_prompt.
CLAP_TEXTS = ("source", "target")
# Ids name output folders (audio/<id>/...): keep them to characters every filesystem takes.
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEYS = {"id", "category", "op", "source", "target", "word_weights", "target_prompt"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProtocolPair:
    id: str
    category: str
    op: str
    source: str
    target: str | None = None  # None for reweight: the edit keeps the source text
    word_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    target_prompt: str | None = None  # None: the target (reweight: the source)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise InvalidRequestError(f"id {self.id!r} must be 1-64 lower-case letters, digits, '-' or '_'")
        if not isinstance(self.category, str) or not self.category.strip():
            raise InvalidRequestError(f"category {self.category!r} must be a label, e.g. "
                                      f"{', '.join(CATEGORIES)} or your own")
        if self.category in CATEGORY_OPS and self.op != CATEGORY_OPS[self.category]:
            raise InvalidRequestError(f"category {self.category} pairs are {CATEGORY_OPS[self.category]} "
                                      f"edits, not {self.op!r}")
        if self.target_prompt is not None and (not isinstance(self.target_prompt, str)
                                               or not self.target_prompt.strip()):
            raise InvalidRequestError("target_prompt (the text CLAP scores the edit against with --clap-text "
                                      "target) is empty: give the text or leave it out")
        if self.op == "reweight" and self.target is not None:
            raise InvalidRequestError("a reweight pair keeps its source text: leave out target")
        spec = self.spec()  # every EditSpec rule: prompts, weights in [-2, 2], words in the target
        object.__setattr__(self, "word_weights", MappingProxyType(dict(spec.word_weights)))
        if self.target_prompt is None:
            object.__setattr__(self, "target_prompt", spec.target)
        src, tgt = [word_key(w) for w in split_words(spec.source)], [word_key(w) for w in split_words(spec.target)]
        if self.op == "replace" and (len(src) != len(tgt) or src == tgt):
            # Checked here (compile_edit checks counts too) so a bad file fails before a model loads.
            raise InvalidRequestError(f"replace needs the same number of words and a changed word: "
                                      f"source has {len(src)}, target {len(tgt)}")
        if self.op == "refine" and (len(tgt) <= len(src) or not _is_subsequence(src, tgt)):
            raise InvalidRequestError("a refine pair adds words: the target must hold every source word, "
                                      "in order, and more")

    def spec(self, setting: str | None = None, reweight_mode: str = "p2p", mapper: str | None = None) -> EditSpec:
        """The edit under a named setting (None: the default setting) and its mapper, or `mapper`."""
        extra = {} if setting is None else {"setting": setting}
        return EditSpec(source=self.source, target=self.target, op=self.op, word_weights=dict(self.word_weights),
                        reweight_mode=reweight_mode, mapper=mapper, **extra)

    def clap_text(self, which: str) -> str:
        """The text CLAP scores the edit against: `which` is one of CLAP_TEXTS."""
        assert which in CLAP_TEXTS, which
        return self.source if which == "source" else self.target_prompt

    def to_json(self) -> dict:
        return {"id": self.id, "category": self.category, "op": self.op, "source": self.source,
                "target": self.target, "word_weights": dict(self.word_weights),
                "target_prompt": self.target_prompt}


def _is_subsequence(short: Sequence[str], long: Sequence[str]) -> bool:
    it = iter(long)
    return all(any(w == x for x in it) for w in short)


def load_pairs(path: str | Path = PAIRS_FILE) -> tuple[ProtocolPair, ...]:
    """All pairs of a protocol file, in file order; any problem is one InvalidRequestError
    naming the file and the pair."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read protocol pairs {path}: {exc}") from exc
    raw = doc.get("pairs") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError(f"protocol pairs {path}: expected an object with a non-empty list \"pairs\"")
    pairs: list[ProtocolPair] = []
    seen: set[str] = set()
    for i, item in enumerate(raw, 1):
        name = item.get("id", "?") if isinstance(item, dict) else "?"
        where = f"protocol pairs {path}, pair {i} ({name})"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{where}: expected an object, got {type(item).__name__}")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise InvalidRequestError(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
        try:
            pair = ProtocolPair(**{k: item[k] for k in item})
        except TypeError as exc:  # a required key is missing
            raise InvalidRequestError(f"{where}: {exc}") from None
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}: {exc}") from None
        if pair.id in seen:
            raise InvalidRequestError(f"{where}: id {pair.id!r} is used twice")
        seen.add(pair.id)
        pairs.append(pair)
    return tuple(pairs)


def select_pairs(pairs: Sequence[ProtocolPair], *, count: int | None = None,
                 ids: Sequence[str] | None = None) -> tuple[ProtocolPair, ...]:
    """`ids` in the order given, or the first `count` taking categories in turn (TURNS:
    instrument, refine, reweight, genre, mood, then other labels in file order, instrument,
    ...), so that a short run still covers every kind of edit; neither: all pairs."""
    if ids is not None:
        if not ids:
            raise InvalidRequestError("--pair-ids names no pair: give ids such as instrument-01,refine-01")
        by_id = {p.id: p for p in pairs}
        for i in ids:
            if i not in by_id:
                close = difflib.get_close_matches(i, by_id, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"ids run {pairs[0].id} ... {pairs[-1].id}"
                raise InvalidRequestError(f"pair id {i!r} is not in the protocol set: {hint}")
        if len(set(ids)) != len(ids):
            raise InvalidRequestError(f"--pair-ids names a pair twice: {', '.join(ids)}")
        return tuple(by_id[i] for i in ids)
    if count is None:
        return tuple(pairs)
    if not 1 <= count <= len(pairs):
        raise InvalidRequestError(f"--pairs {count}: give a number of pairs from 1 to {len(pairs)}")
    labels = [c for c in TURNS if c in {p.category for p in pairs}]
    labels += [c for c in dict.fromkeys(p.category for p in pairs) if c not in TURNS]
    queues = [[p for p in pairs if p.category == c] for c in labels]
    turns = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return tuple(turns[:count])


def check_tokenizer(pairs: Sequence[ProtocolPair], tokenizer, num_layers: int, setting: str | None = None) -> None:
    """Compile every pair against a model's tokenizer: all words known (none encoded as
    <unk>), prompts within its token limit, Replace word counts equal, word parts where
    the tokenizer splits."""
    from editgen.engine.edit import compile_edit

    for pair in pairs:
        try:
            for prompt in dict.fromkeys((pair.source, pair.target or pair.source)):
                unknown = tokenizer.unknown_words(prompt)
                if unknown:
                    raise InvalidRequestError(f"the tokenizer does not know {', '.join(map(repr, unknown))} "
                                              f"in {prompt!r}")
            compile_edit(pair.spec(setting), tokenizer, num_layers)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"protocol pair {pair.id}: {exc}") from None
