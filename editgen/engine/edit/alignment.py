"""Token correspondences between a source and a target prompt (numpy only).

Follows Prompt-to-Prompt's `seq_aligner` (get_replacement_mapper, get_refinement_mapper)
on our fixed-length prompts. Pad positions never take anything from the source: the
source may have real tokens at a target's pad positions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from editgen.engine.tokenizer import TokenizedPrompt
from editgen.errors import InvalidRequestError

MATCH, MISMATCH, GAP = 1, -1, 0  # P2P's ScoreParams(gap=0, match=1, mismatch=-1)
_LEFT, _UP, _DIAG = 1, 2, 3  # traceback moves: y[j-1] unaligned, x[i-1] skipped, aligned


def replace_mapper(src: TokenizedPrompt, tgt: TokenizedPrompt, T: int) -> np.ndarray:
    """M: float32 [T, T], M[s, t] = weight target token t takes from source token s, so
    P_inj = P_src @ M (P_src [heads, T]).

    Words are paired by position (equal word counts). For a pair with m source and n
    target pieces: m == n maps piece k to piece k (unchanged words: identity); otherwise
    every source piece gives 1/n to every target piece (P2P's rule): one piece -> two
    gives 0.5 each, two -> one sums the two. Either way the word's total attention is
    kept. Special tokens (`</s>`) map to each other in order; pad columns are 0.
    """
    check_word_counts(src, tgt)
    mapper = np.zeros((T, T), dtype=np.float32)
    for word in range(len(tgt.words)):
        s_tok = np.asarray(src.word_tokens(word), dtype=np.intp)
        t_tok = np.asarray(tgt.word_tokens(word), dtype=np.intp)
        if len(s_tok) == len(t_tok):
            mapper[s_tok, t_tok] = 1.0  # pairs (s_tok[k], t_tok[k])
        elif len(t_tok):
            mapper[np.ix_(s_tok, t_tok)] = 1.0 / len(t_tok)
    s_special = [t for t, w in enumerate(src.word_of_token) if w is None]
    t_special = [t for t, w in enumerate(tgt.word_of_token) if w is None]
    assert len(s_special) == len(t_special), "one tokenizer adds the same special tokens"
    mapper[s_special, t_special] = 1.0
    return mapper


def check_word_counts(src: TokenizedPrompt, tgt: TokenizedPrompt) -> None:
    """Replace pairs words by position (both mapper kinds): the counts must be equal."""
    if len(src.words) != len(tgt.words):
        raise InvalidRequestError(
            f"replace needs the same number of words: source has {len(src.words)}, target "
            f"has {len(tgt.words)}; use --op refine to add or remove words")


def needleman_wunsch(x: Sequence[int], y: Sequence[int]) -> tuple[int | None, ...]:
    """Global alignment of x and y; for each y[j], the index of its x partner or None.

    Scores: match +1, mismatch -1, gap 0, so only equal tokens are ever paired.
    Ties (several optimal alignments): at each cell the move is chosen in the order
    left (y[j-1] unaligned), up (x[i-1] skipped), diagonal, as P2P's global_align does.
    Tracing back from the end, this leaves later copies of a repeated token unaligned:
    x = [a], y = [a, a] pairs y[0] with x[0].
    """
    n, m = len(x), len(y)
    score = np.zeros((n + 1, m + 1), dtype=np.int64)  # score[i, j]: x[:i] vs y[:j]
    move = np.zeros((n + 1, m + 1), dtype=np.int8)
    score[0, :] = GAP * np.arange(m + 1)
    score[:, 0] = GAP * np.arange(n + 1)
    move[0, 1:], move[1:, 0] = _LEFT, _UP
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i, j - 1] + GAP
            up = score[i - 1, j] + GAP
            diag = score[i - 1, j - 1] + (MATCH if x[i - 1] == y[j - 1] else MISMATCH)
            best = max(left, up, diag)
            score[i, j] = best
            move[i, j] = _LEFT if best == left else _UP if best == up else _DIAG
    partner: list[int | None] = [None] * m
    i, j = n, m
    while i > 0 or j > 0:
        step = move[i, j]
        if step == _DIAG:
            i, j = i - 1, j - 1
            partner[j] = i
        elif step == _LEFT:
            j -= 1
        else:
            i -= 1
    return tuple(partner)


def refine_alignment(src: TokenizedPrompt, tgt: TokenizedPrompt,
                     T: int) -> tuple[np.ndarray, np.ndarray]:
    """index: int64 [T] source token of each target token; alpha: float32 [T].

    Real target tokens aligned to a source token: alpha 1, index = that token. Target
    tokens with no partner (inserted words): alpha 0, index 0. Pad positions: index =
    own position, alpha 0, i.e. "keep the own map", which is exact (the own map is 0
    there) whatever the source row holds at that position.
    """
    partner = needleman_wunsch(src.ids[: src.length].tolist(), tgt.ids[: tgt.length].tolist())
    index = np.arange(T, dtype=np.int64)
    alpha = np.zeros(T, dtype=np.float32)
    for t, s in enumerate(partner):
        index[t] = 0 if s is None else s
        alpha[t] = 0.0 if s is None else 1.0
    return index, alpha


def refine_mapper(src: TokenizedPrompt, tgt: TokenizedPrompt, T: int) -> tuple[np.ndarray, np.ndarray]:
    """mapper float32 [T, T] (one-hot columns, 0 where alpha is 0), alpha float32 [T]:
    refine_alignment as the plan's tensors."""
    index, alpha = refine_alignment(src, tgt, T)
    mapper = np.zeros((T, T), dtype=np.float32)
    aligned = np.flatnonzero(alpha == 1.0)
    mapper[index[aligned], aligned] = 1.0
    return mapper, alpha
