"""The `editgen-code` mapper: the released EditGen code's Replace and Refine, checked on
hand-built source/target maps against the released operators transcribed from their
description (docs/design.md, "Mapper kinds"), through the plan's tensors and the edit
formula of a step (hard blend, window on).

Splits (pinned in test_tokenizer.py): piano, guitar, with, warm, drums, lofi are one
piece; marimba = ▁m + arimba; sitar = ▁s + i + tar.
"""

from __future__ import annotations

import numpy as np
import pytest

from editgen.engine.edit import MAPPERS, SETTINGS, EditBatch, EditSpec, compile_edit
from editgen.engine.tokenizer import TextTokenizer
from tests.test_edit_plan import _edited_maps

T = 64
HEADS = 2


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.preset(max_tokens=T)


def random_maps(lengths, seed: int) -> np.ndarray:
    """float32 [rows, HEADS, T]: a softmax over each row's real tokens, 0 on its pads."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((len(lengths), HEADS, T), dtype=np.float32)
    for r, n in enumerate(lengths):
        logits = rng.normal(size=(HEADS, n))
        maps[r, :, :n] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return maps


def engine_edit(spec: EditSpec, tok: TextTokenizer, seed: int = 0, *, same_maps: bool = False):
    """(P_src, P_tgt, P): the source and target rows' own maps (random, or one map for both
    with same_maps) and the target's edited map, as a step computes it from the plan's
    tensors (hard cross blend, every window on)."""
    plan = compile_edit(spec, tok, num_layers=1)
    x = EditBatch([plan], cfg=False, num_heads=HEADS).inputs(0, 10)
    own = random_maps([plan.source.length, plan.target.length], seed)
    if same_maps:
        own[0] = own[1]
    return own[0], own[1], _edited_maps(own, x, layer=0)[1]


def assert_edited(p, want, p_tgt, injected) -> None:
    """Columns not injected are the target's own bit for bit; injected ones equal `want` up
    to the rounding of the step's exact form P_own - (P_own - inj) (an ulp of the maps)."""
    own = [t for t in range(T) if t not in injected]
    np.testing.assert_array_equal(p[:, own], p_tgt[:, own])
    np.testing.assert_allclose(p, want, rtol=0, atol=1e-7)


# --- the released operators, transcribed from their description -----------------------

def released_word_indices(pieces, word: str) -> list[int]:
    """The pieces that spell `word`: each token whose decoded string extends the run of
    taken pieces to a prefix of the word is taken (the released token lookup)."""
    taken, spelled = [], ""
    for i, piece in enumerate(pieces):
        if word.startswith(spelled + piece):
            taken.append(i)
            spelled += piece
    return taken


def released_replace_maps(p_src, p_tgt, src_idx, tgt_idx):
    """Only the target word's columns change, each to the mean of the source word's pieces'
    columns (blend 1); every other column, `</s>` included, is the target's own; no
    renormalisation."""
    out = p_tgt.copy()
    out[:, tgt_idx] = p_src[:, src_idx].mean(axis=-1, keepdims=True)
    return out


def released_refine_pairs(src_pieces, tgt_pieces) -> list[tuple[int, int]]:
    """Every (i, j) whose decoded strings are equal, neither starting with "<"."""
    return [(i, j) for i, a in enumerate(src_pieces) for j, b in enumerate(tgt_pieces)
            if a == b and not a.startswith("<") and not b.startswith("<")]


# --- Replace -----------------------------------------------------------------------------

REPLACES = {  # name: (source, target, source word, target word, source pieces, target pieces)
    "1->1": ("lofi piano with warm drums", "lofi guitar with warm drums", "piano", "guitar", [1], [1]),
    "1->3": ("lofi piano with warm drums", "lofi sitar with warm drums", "piano", "sitar", [1], [1, 2, 3]),
    "3->1": ("lofi sitar with warm drums", "lofi piano with warm drums", "sitar", "piano", [1, 2, 3], [1]),
}


@pytest.mark.parametrize("case", REPLACES)
def test_replace_equals_the_released_operator(tok, case):
    source, target, word_a, word_b, src_idx, tgt_idx = REPLACES[case]
    spec = EditSpec(source=source, target=target, mapper="editgen-code")
    p_src, p_tgt, p = engine_edit(spec, tok)
    src, tgt = tok.encode(source), tok.encode(target)
    # The released lookup finds the same pieces as ours.
    assert released_word_indices(src.decoded, word_a) == src_idx
    assert released_word_indices(tgt.decoded, word_b) == tgt_idx
    assert_edited(p, released_replace_maps(p_src, p_tgt, src_idx, tgt_idx), p_tgt, tgt_idx)
    eos = tgt.length - 1
    assert tgt.pieces[eos] == "</s>" and (p[:, eos] == p_tgt[:, eos]).all()
    # No renormalisation: rows sum to 1 - (own word columns) + (injected columns).
    injected = len(tgt_idx) * p_src[:, src_idx].mean(-1)
    np.testing.assert_allclose(p.sum(-1), 1 - p_tgt[:, tgt_idx].sum(-1) + injected, rtol=1e-5)


def test_replace_two_changed_words_each_from_its_own_source_word(tok):
    source, target = "marimba with warm drums", "sitar with soft drums"
    p_src, p_tgt, p = engine_edit(EditSpec(source=source, target=target, mapper="editgen-code"), tok, seed=3)
    # source: ▁m 0, arimba 1, with 2, warm 3, drums 4 | target: ▁s 0, i 1, tar 2, with 3, soft 4, drums 5
    assert tok.encode(target).pieces[:6] == ("▁s", "i", "tar", "▁with", "▁soft", "▁drums")
    want = released_replace_maps(p_src, p_tgt, [0, 1], [0, 1, 2])
    want = released_replace_maps(p_src, want, [3], [4])  # warm -> soft
    assert_edited(p, want, p_tgt, [0, 1, 2, 4])


def test_replace_plan_tensors(tok):
    plan = compile_edit(EditSpec(source="lofi sitar with warm drums", target="lofi piano with warm drums",
                                 mapper="editgen-code"), tok, 2)
    third = np.float32(1 / 3)
    want = np.zeros((T, T), np.float32)
    want[[1, 2, 3], 1] = third  # piano's column: the mean of ▁s, i, tar
    np.testing.assert_array_equal(plan.mapper, want)
    np.testing.assert_array_equal(plan.alphas, np.eye(1, T, 1, dtype=np.float32)[0])
    assert plan.mapper_kind == "editgen-code" and plan.to_json()["mapper_kind"] == "editgen-code"


# --- Refine ------------------------------------------------------------------------------

def test_refine_repeated_tokens_and_eos(tok):
    """Source piano twice, target piano three times and `</s>`: every column whose decoded
    token equals a source token's takes one of them (k-th occurrence <-> k-th, the last
    source one for the extra), `</s>` and new tokens keep their own maps."""
    source, target = "piano with piano", "warm piano with piano drums and piano"
    p_src, p_tgt, p = engine_edit(EditSpec(source=source, target=target, op="refine", mapper="editgen-code"),
                                  tok, seed=1)
    src, tgt = tok.encode(source), tok.encode(target)
    # source: piano 0, with 1, piano 2, </s> 3 | target: warm 0, piano 1, with 2, piano 3, drums 4, and 5,
    # piano 6, </s> 7
    assert src.decoded == ("piano", "with", "piano", "</s>")
    assert tgt.decoded == ("warm", "piano", "with", "piano", "drums", "and", "piano", "</s>")
    pairs = released_refine_pairs(src.decoded, tgt.decoded)
    assert pairs == [(0, 1), (0, 3), (0, 6), (1, 2), (2, 1), (2, 3), (2, 6)]  # many to many, no </s>
    want = p_tgt.copy()
    picks = {1: 0, 2: 1, 3: 2, 6: 2}  # the rule's pick among each column's pairs
    for j, i in picks.items():
        assert (i, j) in pairs
        want[:, j] = p_src[:, i]
    assert_edited(p, want, p_tgt, list(picks))  # </s> (7) keeps its own map
    assert not np.allclose(p_src[:, 3], p_tgt[:, 7])


def test_refine_columns_with_one_partner_equal_the_released_write(tok):
    """Where no token repeats, the released writes are defined: the plan gives exactly them."""
    source, target = "lofi piano with warm drums", "lofi marimba piano with soft warm drums"
    p_src, p_tgt, p = engine_edit(EditSpec(source=source, target=target, op="refine", mapper="editgen-code"),
                                  tok, seed=2)
    src, tgt = tok.encode(source), tok.encode(target)
    want = p_tgt.copy()
    pairs = released_refine_pairs(src.decoded, tgt.decoded)
    for i, j in pairs:
        want[:, j] = p_src[:, i]  # blend 1: the source column replaces the target's
    assert_edited(p, want, p_tgt, [j for _, j in pairs])
    plan = compile_edit(EditSpec(source=source, target=target, op="refine", mapper="editgen-code"), tok, 1)
    # lofi 0, ▁m 1, arimba 2, piano 3, with 4, soft 5, warm 6, drums 7, </s> 8
    np.testing.assert_array_equal(plan.alphas[:9], [1, 0, 0, 1, 1, 0, 1, 1, 0])


@pytest.mark.parametrize("mapper", MAPPERS)
@pytest.mark.parametrize("op", ["replace", "refine", "reweight"])
def test_identical_prompts_are_identity(tok, op, mapper):
    """Target = source, equal rows: the edited map is the own map bit for bit, repeated
    tokens included (each column takes its own position's source column, or nothing)."""
    prompt = "lofi piano with piano and warm piano"
    extra = {"word_weights": {"piano": 1.0}} if op == "reweight" else {}
    _, p_tgt, p = engine_edit(EditSpec(source=prompt, target=prompt, op=op, mapper=mapper, **extra), tok,
                              same_maps=True)
    np.testing.assert_array_equal(p, p_tgt)


# --- settings -----------------------------------------------------------------------------

def test_settings_name_their_mapper_and_an_explicit_mapper_wins(tok):
    assert {n: s.mapper for n, s in SETTINGS.items()} == {"editgen-code": "editgen-code", "paper-text": "p2p",
                                                          "hard": "p2p"}
    base = dict(source="lofi piano with warm drums", target="lofi marimba with warm drums")
    assert EditSpec(**base).mapper == "editgen-code"
    assert EditSpec(**base, setting="hard").mapper == "p2p"
    assert EditSpec(**base, setting="hard", mapper="editgen-code").mapper == "editgen-code"
    assert EditSpec(**base, mapper="p2p").mapper == "p2p"
    for mapper in MAPPERS:  # the same tensors, whichever kind built them
        plan = compile_edit(EditSpec(**base, mapper=mapper), tok, 3)
        assert (plan.mapper.shape, plan.mapper.dtype, plan.alphas.shape, plan.alphas.dtype) == \
               ((T, T), np.float32, (T,), np.float32)
        assert plan.mapper_kind == mapper
