"""The released EditGen code's Replace and Refine as plan tensors (mapper kind `editgen-code`).

The released code (github.com/billsioros/EditGen; file:line below, docs/design.md has the
formulas) writes into the target's cross-attention probabilities after the softmax, only
for the columns it names, with blend 1 in its evaluation (notebooks/evaluation/MusicGen.ipynb,
the `Dataset` cell: `ReplaceWordController(indices, 1)`, `RefineController(indices, 1)`):
every other column, `</s>` included, keeps the target's own attention and rows are not
renormalised (controllers.py:58-60, 73-75; _base_controller.py:33, the renormalisation
commented out). Here that is mapper M [T, T] and alpha [T]: alpha 1 on a named column, which
then takes P_src @ M, alpha 0 (own map) everywhere else, pads included; the same tensors as
Prompt-to-Prompt's mappers, so kernels and graphs are unchanged.
"""

from __future__ import annotations

import numpy as np

from editgen.engine.edit.alignment import check_word_counts
from editgen.engine.edit.words import key_span, word_key
from editgen.engine.tokenizer import TokenizedPrompt


def word_pieces(prompt: TokenizedPrompt, word: int) -> tuple[int, ...]:
    """The tokens of word `word` less punctuation tokens around it: the released code is given
    the bare word and takes the pieces that spell it (_tokens.py:24-29). Where punctuation
    shares a piece with the word, the whole word's tokens."""
    got = prompt.span_tokens(word, *key_span(prompt.text, word))
    return prompt.word_tokens(word) if got is None else got


def released_replace(src: TokenizedPrompt, tgt: TokenizedPrompt, T: int) -> tuple[np.ndarray, np.ndarray]:
    """mapper float32 [T, T], alpha float32 [T] of the released Replace (controllers.py:51-60).

    Words pair by position (equal counts, as our Replace); a pair whose keys differ is a
    replaced word (the released code is given that word of each prompt). Each of the target
    word's n pieces takes the mean of the source word's m pieces' columns:
    M[s, t] = 1/m for s in the source pieces, alpha[t] = 1. 1 -> 3 pieces: each of the three
    gets the one source column; 3 -> 1: the one gets the mean of three (P2P's mapper would
    give the sum). Several replaced words: each pair on its own.
    """
    check_word_counts(src, tgt)
    mapper = np.zeros((T, T), dtype=np.float32)
    alpha = np.zeros(T, dtype=np.float32)
    for word, (a, b) in enumerate(zip(src.words, tgt.words)):
        if word_key(a) == word_key(b):
            continue
        s_tok = np.asarray(word_pieces(src, word), dtype=np.intp)
        t_tok = np.asarray(word_pieces(tgt, word), dtype=np.intp)
        mapper[np.ix_(s_tok, t_tok)] = np.float32(1.0 / len(s_tok))
        alpha[t_tok] = 1.0
    return mapper, alpha


def released_refine(src: TokenizedPrompt, tgt: TokenizedPrompt, T: int) -> tuple[np.ndarray, np.ndarray]:
    """mapper float32 [T, T] (one-hot columns), alpha float32 [T] of the released Refine
    (_tokens.py:40-54, controllers.py:72-75).

    Source token i and target token j are paired iff their decoded strings are equal and
    neither starts with "<" (_tokens.py:48-52): `</s>`, `<unk>` and pads never pair, so
    they keep their own maps; a "▁" piece alone decodes to "" and pairs with other "".
    A target column with no partner keeps its own map (alpha 0).

    Repeated tokens: the released code writes every pair (i, j) into column j, so a column
    with several equal source tokens is written several times in one indexed assignment,
    whose result torch leaves undefined (on CPU the last write stays); it is always one
    source column, never a mix. The rule here: the k-th occurrence of a string in the
    target takes the k-th occurrence in the source, the source's last one when the target
    has more (M[i, j] = 1, alpha[j] = 1). So an identity edit stays exact, which a mean of
    the equal columns would not give.
    """
    mapper = np.zeros((T, T), dtype=np.float32)
    alpha = np.zeros(T, dtype=np.float32)
    seen: dict[str, int] = {}  # occurrences of each string so far in the target
    for j, piece in enumerate(tgt.decoded):
        if piece.startswith("<"):
            continue
        partners = [i for i, other in enumerate(src.decoded) if other == piece]
        rank = seen.get(piece, 0)
        seen[piece] = rank + 1
        if partners:
            mapper[partners[min(rank, len(partners) - 1)], j] = 1.0
            alpha[j] = 1.0
    return mapper, alpha
