"""EditSpec -> EditPlan -> EditStepInputs, on hand-worked examples (preset tokenizer).

Splits used below (pinned in test_tokenizer.py): piano, guitar, drums, lofi, warm, with
are one piece; marimba = ▁m + arimba, sparkling = ▁spark + ling, sitar = ▁s + i + tar.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from editgen.engine.edit import (SETTINGS, EditBatch, EditSpec, EditStepInputs, LayerSchedule,
                                 compile_edit, needleman_wunsch, refine_alignment,
                                 replace_mapper)
from editgen.engine.config import ModelShapes
from editgen.engine.tokenizer import TextTokenizer
from editgen.errors import InvalidRequestError

ROOT = Path(__file__).resolve().parents[1]
T = 64
BASE = "lofi piano with warm drums"  # 5 one-piece words + </s>


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.preset(max_tokens=T)


def expected_mapper(entries: dict[tuple[int, int], float]) -> np.ndarray:
    m = np.zeros((T, T), dtype=np.float32)
    for (s, t), v in entries.items():
        m[s, t] = v
    return m


# --- replace ------------------------------------------------------------------------


def test_replace_identical_is_identity(tok):
    p = tok.encode(BASE)
    m = replace_mapper(p, p, T)
    np.testing.assert_array_equal(m[:6, :6], np.eye(6, dtype=np.float32))
    assert m.sum() == 6.0  # nothing on pads


def test_replace_one_piece_to_two_gives_half_each(tok):
    src, tgt = tok.encode(BASE), tok.encode("lofi marimba with warm drums")
    # target: lofi 0, ▁m 1, arimba 2, with 3, warm 4, drums 5, </s> 6
    want = expected_mapper({(0, 0): 1, (1, 1): 0.5, (1, 2): 0.5, (2, 3): 1, (3, 4): 1,
                            (4, 5): 1, (5, 6): 1})
    np.testing.assert_array_equal(replace_mapper(src, tgt, T), want)


def test_replace_two_pieces_to_one_sums(tok):
    src, tgt = tok.encode("lofi marimba with warm drums"), tok.encode(BASE)
    want = expected_mapper({(0, 0): 1, (1, 1): 1, (2, 1): 1, (3, 2): 1, (4, 3): 1,
                            (5, 4): 1, (6, 5): 1})
    m = replace_mapper(src, tgt, T)
    np.testing.assert_array_equal(m, want)
    p_src = np.zeros((1, T), dtype=np.float32)
    p_src[0, [1, 2]] = [0.25, 0.125]
    assert (p_src @ m)[0, 1] == 0.375  # piano takes both marimba pieces' attention


def test_replace_one_to_three_and_two_to_two(tok):
    src = tok.encode("warm piano marimba")  # warm 0, piano 1, ▁m 2, arimba 3, </s> 4
    tgt = tok.encode("warm sitar sparkling")  # warm 0, ▁s 1, i 2, tar 3, ▁spark 4, ling 5
    third = np.float32(1.0 / 3.0)
    want = expected_mapper({(0, 0): 1, (1, 1): third, (1, 2): third, (1, 3): third,
                            (2, 4): 1, (3, 5): 1, (4, 6): 1})  # 2 -> 2 pieces: in order
    np.testing.assert_array_equal(replace_mapper(src, tgt, T), want)


def test_replace_needs_equal_word_counts(tok):
    src, tgt = tok.encode(BASE), tok.encode("lofi piano with warm drums tonight")
    with pytest.raises(InvalidRequestError) as err:
        replace_mapper(src, tgt, T)
    assert str(err.value) == ("replace needs the same number of words: source has 5, target "
                              "has 6; use --op refine to add or remove words")


# --- refine -------------------------------------------------------------------------


def test_refine_identical_is_arange(tok):
    p = tok.encode(BASE)
    index, alpha = refine_alignment(p, p, T)
    np.testing.assert_array_equal(index, np.arange(T))
    np.testing.assert_array_equal(alpha, [1] * 6 + [0] * (T - 6))


def test_refine_inserted_words(tok):
    src, tgt = tok.encode(BASE), tok.encode(BASE + " and guitar")
    index, alpha = refine_alignment(src, tgt, T)
    # target: lofi piano with warm drums and guitar </s>; "and", "guitar" are new
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, 0, 0, 5] + list(range(8, T)))
    np.testing.assert_array_equal(alpha, [1, 1, 1, 1, 1, 0, 0, 1] + [0] * (T - 8))


def test_refine_removed_words(tok):
    src, tgt = tok.encode(BASE + " and guitar"), tok.encode(BASE)
    index, alpha = refine_alignment(src, tgt, T)
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, 7] + list(range(6, T)))
    np.testing.assert_array_equal(alpha, [1] * 6 + [0] * (T - 6))


def test_refine_inserted_multi_piece_word(tok):
    src, tgt = tok.encode("lofi piano"), tok.encode("lofi marimba piano")
    index, alpha = refine_alignment(src, tgt, T)
    np.testing.assert_array_equal(index[:5], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(alpha[:5], [1, 0, 0, 1, 1])


def test_refine_substituted_word_is_new(tok):
    # mismatch (-1) never beats two gaps (0): a swapped word is unaligned, not mapped
    src, tgt = tok.encode("lofi piano with drums"), tok.encode("lofi guitar with drums")
    index, alpha = refine_alignment(src, tgt, T)
    np.testing.assert_array_equal(index[:5], [0, 0, 2, 3, 4])
    np.testing.assert_array_equal(alpha[:5], [1, 0, 1, 1, 1])


def test_needleman_wunsch_tie_breaking():
    assert needleman_wunsch([7], [7, 7]) == (0, None)  # earlier copy aligned
    assert needleman_wunsch([1, 2], [2, 1]) == (1, None)
    assert needleman_wunsch([1, 2, 3], [1, 3]) == (0, 2)
    assert needleman_wunsch([], [4]) == (None,)


# --- spec validation -----------------------------------------------------------------


@pytest.mark.parametrize("c", [2.5, -2.01, float("nan")])
def test_weight_out_of_range(c):
    with pytest.raises(InvalidRequestError, match=r"must be in \[-2, 2\]"):
        EditSpec(source=BASE, target=BASE, word_weights={"piano": c})


def test_weight_bounds_are_inclusive():
    spec = EditSpec(source=BASE, target=BASE, word_weights={"Piano": -2, "drums": 2.0})
    assert dict(spec.word_weights) == {"piano": -2.0, "drums": 2.0}


def test_word_not_in_target():
    with pytest.raises(InvalidRequestError) as err:
        EditSpec(source=BASE, target="lofi guitar with warm drums",
                 word_weights={"piano": 1.5})
    assert str(err.value) == (
        "word_weights: word 'piano' is not in the target prompt 'lofi guitar with warm "
        "drums' (words: lofi, guitar, with, warm, drums): name one of them")
    with pytest.raises(InvalidRequestError, match="word 'violin' is not in the target"):
        EditSpec(source=BASE, target=BASE, windows={"violin": 0.5})


@pytest.mark.parametrize("value", [1.5, -0.1, "0.6:0.2", "0.1:1.2", "a:b", "0.1:0.2:0.3", [0.1], True])
def test_window_out_of_range(value):
    with pytest.raises(InvalidRequestError, match=r"windows\['default'\] is"):
        EditSpec(source=BASE, target=BASE, windows={"default": value})


def test_window_forms():
    spec = EditSpec(source=BASE, target=BASE, windows={"default": 0.4, "piano": "0.1:0.6", "drums": (0.2, 1)},
                    self_window="0.5")
    assert dict(spec.windows) == {"default": (0.0, 0.4), "piano": (0.1, 0.6), "drums": (0.2, 1.0)}
    assert spec.self_window == (0.0, 0.5)


def test_reweight_rules():
    spec = EditSpec(source=BASE, op="reweight", word_weights={"piano": 1.5})
    assert spec.target == BASE
    with pytest.raises(InvalidRequestError, match="reweight needs at least one word weight"):
        EditSpec(source=BASE, op="reweight")
    with pytest.raises(InvalidRequestError, match="op reweight keeps the prompt"):
        EditSpec(source=BASE, target="lofi guitar with warm drums", op="reweight",
                 word_weights={"guitar": 1.5})


def test_other_spec_errors():
    with pytest.raises(InvalidRequestError, match="source prompt is empty"):
        EditSpec(source="  ", target=BASE)
    with pytest.raises(InvalidRequestError, match="op 'swap' is not one of"):
        EditSpec(source=BASE, target=BASE, op="swap")
    with pytest.raises(InvalidRequestError, match="op replace needs a target prompt"):
        EditSpec(source=BASE)
    with pytest.raises(InvalidRequestError, match="cross blend 'smooth' is not understood"):
        EditSpec(source=BASE, target=BASE, cross_blend="smooth")
    with pytest.raises(InvalidRequestError, match="self blend 'soft' is not understood"):
        EditSpec(source=BASE, target=BASE, self_blend="soft")
    with pytest.raises(InvalidRequestError, match="setting 'paper' is not one of editgen-code, paper-text, hard"):
        EditSpec(source=BASE, target=BASE, setting="paper")
    with pytest.raises(InvalidRequestError, match="reweight mode 'scaled' is not one of p2p, editgen-code"):
        EditSpec(source=BASE, target=BASE, reweight_mode="scaled")
    with pytest.raises(InvalidRequestError, match="c = 0 is undefined there"):
        EditSpec(source=BASE, target=BASE, word_weights={"piano": 0}, reweight_mode="editgen-code")


# --- layer schedules and settings ------------------------------------------------------


def test_layer_schedules():
    f32 = np.float32
    cross = lambda text: LayerSchedule.parse(text, "cross").layer_values(4)  # noqa: E731
    own = lambda text: LayerSchedule.parse(text, "self").layer_values(4)  # noqa: E731
    np.testing.assert_array_equal(cross("soft"), np.array([0, 0.25, 0.5, 0.75], f32))
    np.testing.assert_array_equal(cross("hard"), np.zeros(4, f32))
    np.testing.assert_array_equal(cross("reversed"), np.array([0.75, 0.5, 0.25, 0], f32))
    np.testing.assert_array_equal(cross(" Constant:0.3 "), np.full(4, 0.3, f32))
    np.testing.assert_array_equal(cross("0,0.5,1,0.25"), np.array([0, 0.5, 1, 0.25], f32))
    np.testing.assert_array_equal(own("editgen"), np.array([1, 3, 5, 7], f32) / 8)  # (2i+1)/(2N)
    np.testing.assert_array_equal(own("off"), np.zeros(4, f32))
    np.testing.assert_array_equal(own("full"), np.ones(4, f32))
    assert cross("soft").dtype == np.float32
    assert str(LayerSchedule.parse("constant:0.30", "cross")) == "constant:0.3"
    # The spec keeps the user's values exactly (it stores the schedule as text and parses it again).
    spec = EditSpec(source=BASE, target=BASE, cross_blend="0.1234567,0.5,1,0", self_blend="constant:0.00000123456")
    np.testing.assert_array_equal(spec.cross_schedule.layer_values(4), np.array([0.1234567, 0.5, 1, 0], f32))
    np.testing.assert_array_equal(spec.self_schedule.layer_values(4), np.full(4, 0.00000123456, f32))
    with pytest.raises(InvalidRequestError, match="gives 3 values, this model has 4 decoder layers"):
        LayerSchedule.parse("0,0,1", "self").layer_values(4)


@pytest.mark.parametrize("text", ["constant:1.5", "constant:x", "constant:nan", "linear", "0.5,2", "0,,1"])
def test_layer_schedule_bad_forms(text):
    with pytest.raises(InvalidRequestError, match="blend"):
        LayerSchedule.parse(text, "cross")


def test_named_settings_resolve_to_their_schedules(tok):
    resolved = {name: (s.cross_blend, s.self_blend) for name, s in
                ((n, EditSpec(source=BASE, target=BASE, setting=n)) for n in SETTINGS)}
    assert resolved == {"editgen-code": ("hard", "editgen"), "paper-text": ("soft", "off"), "hard": ("hard", "off")}
    assert EditSpec(source=BASE, target=BASE).setting == "editgen-code"  # the default
    custom = EditSpec(source=BASE, target=BASE, setting="paper-text", self_blend="constant:0.5")
    assert (custom.cross_blend, custom.self_blend, custom.injects_self) == ("soft", "constant:0.5", True)
    plan = compile_edit(EditSpec(source=BASE, target=BASE), tok, num_layers=4)
    np.testing.assert_array_equal(plan.cross_blend, np.zeros(4))
    np.testing.assert_array_equal(plan.self_blend, np.array([1, 3, 5, 7], np.float32) / 8)
    assert EditSpec(source=BASE, target=BASE).injects_self
    assert not EditSpec(source=BASE, target=BASE, setting="hard").injects_self
    assert not EditSpec(source=BASE, target=BASE, self_window="0.5:0.5").injects_self


def _p2p_cross_steps(f, num_steps: int) -> set[int]:
    """Prompt-to-Prompt's get_time_words_attention_alpha / update_alpha_time_word, transcribed:
    an alpha array of num_steps + 1 entries, on in [int(start * len), int(end * len))."""
    bounds = (0, f) if isinstance(f, float) else f
    length = num_steps + 1
    start, end = int(bounds[0] * length), int(bounds[1] * length)
    return {t for t in range(num_steps) if start <= t < end}  # cur_step runs 0..num_steps-1


def _p2p_self_steps(f, num_steps: int) -> set[int]:
    """Prompt-to-Prompt's AttentionControlEdit.num_self_replace, transcribed."""
    bounds = (0, f) if isinstance(f, float) else f
    lo, hi = int(num_steps * bounds[0]), int(num_steps * bounds[1])
    return {t for t in range(num_steps) if lo <= t < hi}


WINDOW_GRID = [0.0, 0.1, 0.2, 0.25, 0.29, 0.3, 1 / 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.99, 1.0, (0.1, 0.6), (0.25, 0.75),
               (0.3, 0.3), (0.0, 1.0)]


@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 10, 50, 99, 100, 251, 1503])
def test_window_steps_equal_prompt_to_prompt(tok, num_steps):
    for f in WINDOW_GRID:
        window = f if isinstance(f, float) else f"{f[0]}:{f[1]}"
        plan = compile_edit(EditSpec(source=BASE, target=BASE, windows={"default": window},
                                     self_window=window), tok, num_layers=2)
        batch = EditBatch([plan], cfg=False, num_heads=1)
        cross, own = set(), set()
        for t in range(num_steps):
            x = batch.inputs(t, num_steps)
            assert plan.window(t, num_steps)[0] == x.window[1, 0]
            cross |= {t} if x.window[1, 0] == 1 else set()
            own |= {t} if x.self_window[1] == 1 else set()
        assert cross == _p2p_cross_steps(f, num_steps), (f, num_steps)
        assert own == _p2p_self_steps(f, num_steps), (f, num_steps)


def test_reweight_modes(tok):
    spec = dict(source=BASE, target=BASE, word_weights={"piano": 2.0, "drums": -0.5})
    p2p = compile_edit(EditSpec(**spec), tok, 2).weights
    code = compile_edit(EditSpec(**spec, reweight_mode="editgen-code"), tok, 2).weights
    np.testing.assert_array_equal(p2p, np.array([1, 2, 1, 1, -0.5] + [1] * (T - 5), np.float32))
    # The released code divides every other column by c, word by word: P2P's factors / prod(c).
    np.testing.assert_allclose(code, p2p / (2.0 * -0.5), rtol=1e-7)
    # piano: untouched by its own c, divided by drums' -0.5; drums: divided by piano's 2.
    assert (code[1], code[4], code[0]) == (1 / -0.5, 1 / 2.0, 1 / (2.0 * -0.5))


# --- plan ----------------------------------------------------------------------------


def test_plan_replace_with_weights_and_windows(tok):
    spec = EditSpec(source=BASE, target="lofi marimba with warm drums",
                    word_weights={"marimba": -1.5}, windows={"default": 0.5, "drums": 0.3})
    plan = compile_edit(spec, tok, num_layers=4)
    assert plan.op == "replace"
    np.testing.assert_array_equal(plan.mapper, replace_mapper(plan.source, plan.target, T))
    np.testing.assert_array_equal(plan.alphas, [1] * 7 + [0] * (T - 7))
    np.testing.assert_array_equal(plan.weights, [1, -1.5, -1.5] + [1] * (T - 3))
    np.testing.assert_array_equal(plan.window_bounds[:, 1], [0.5] * 5 + [0.3] + [0.5] * (T - 6))
    assert (plan.window_bounds[:, 0] == 0).all()
    np.testing.assert_array_equal(plan.cross_blend, [0, 0, 0, 0])  # editgen-code: hard
    # 10 steps, Prompt-to-Prompt's floor(f * 11): drums (token 5) for steps 0..2, others 0..4
    drums_only_off = np.ones(T, np.float32)
    drums_only_off[5] = 0
    np.testing.assert_array_equal(plan.window(2, 10), np.ones(T, np.float32))
    np.testing.assert_array_equal(plan.window(3, 10), drums_only_off)
    np.testing.assert_array_equal(plan.window(5, 10), np.zeros(T, np.float32))
    assert not plan.mapper.flags.writeable
    js = plan.to_json()
    assert js["target"]["pieces"][1:3] == ["▁m", "arimba"] and len(js["mapper"]) == T


def test_plan_refine_mapper_is_one_hot(tok):
    plan = compile_edit(EditSpec(source=BASE, target=BASE + " and guitar", op="refine"),
                        tok, num_layers=2)
    want = expected_mapper({(0, 0): 1, (1, 1): 1, (2, 2): 1, (3, 3): 1, (4, 4): 1,
                            (5, 7): 1})  # no column for "and", "guitar" or pads
    np.testing.assert_array_equal(plan.mapper, want)
    np.testing.assert_array_equal(plan.alphas, [1, 1, 1, 1, 1, 0, 0, 1] + [0] * (T - 8))


def test_plan_reweight(tok):
    plan = compile_edit(EditSpec(source=BASE, op="reweight", word_weights={"piano": 2}),
                        tok, num_layers=3)
    np.testing.assert_array_equal(plan.mapper, expected_mapper({(i, i): 1 for i in range(6)}))
    np.testing.assert_array_equal(plan.alphas, [1] * 6 + [0] * (T - 6))
    np.testing.assert_array_equal(plan.weights, [1, 2] + [1] * (T - 2))
    assert plan.target.text == BASE


# --- step inputs ---------------------------------------------------------------------


def _identity_row(x: EditStepInputs, r: int) -> None:
    assert x.src_row[r] == r
    np.testing.assert_array_equal(x.mapper[r], np.eye(T, dtype=np.float32))
    assert (x.alpha[r] == 1).all() and (x.weight[r] == 1).all()
    assert (x.window[r] == 0).all() and (x.blend[r] == 1).all()
    assert x.use_captured[r] == 0
    assert (x.self_blend[r] == 0).all() and x.self_window[r] == 0


def test_edit_batch_rows(tok):
    plans = [compile_edit(EditSpec(source=BASE, target=t, word_weights=w), tok, 4)
             for t, w in [("lofi marimba with warm drums", {}),
                          ("lofi guitar with warm drums", {"guitar": 1.5})]]
    batch = EditBatch(plans, cfg=True, num_heads=2)
    assert (batch.layout.names, batch.rows) == (("source", "target_1", "target_2"), 6)
    x = batch.inputs(0, 10)
    assert x.src_row.tolist() == [0, 0, 0, 3, 4, 5]
    for r in (0, 3, 4, 5):
        _identity_row(x, r)
    for r, plan in enumerate(plans, start=1):
        np.testing.assert_array_equal(x.mapper[r], plan.mapper)
        np.testing.assert_array_equal(x.alpha[r], plan.alphas)
        np.testing.assert_array_equal(x.weight[r], plan.weights)
        np.testing.assert_array_equal(x.blend[r], plan.cross_blend)
        np.testing.assert_array_equal(x.self_blend[r], plan.self_blend)
        np.testing.assert_array_equal(x.window[r], np.ones(T))
        assert x.self_window[r] == 1
    assert x.captured.shape == (4, 6, 2, T) and (x.use_captured == 0).all()
    assert sorted(x.as_feed()) == sorted(
        ["edit_src_row", "edit_mapper", "edit_alpha", "edit_weight", "edit_window",
         "edit_blend", "edit_use_captured", "edit_captured", "edit_self_blend", "edit_self_window"])


def test_edit_batch_static_rows_and_step_buffers(tok):
    """The static rows are built once; a step refills only its window buffers in place."""
    plan = compile_edit(EditSpec(source=BASE, target=BASE, windows={"default": 0.5}), tok, 4)
    batch = EditBatch([plan], cfg=False, num_heads=2)
    static = batch.row_inputs
    first = batch.step_edits(0, 4)
    assert first.window[1, 0] == 1 and first.captured_rows.size == 0
    second = batch.step_edits(2, 4)
    assert second.window is first.window and second.self_window is first.self_window
    assert second.window[1, 0] == 0  # refilled in place
    assert batch.row_inputs is static
    tracemalloc.start()
    try:
        batch.step_edits(1, 4)  # warm up
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for step in range(4):
            batch.step_edits(step, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 2048  # the static rows alone are > 32 KB


def test_edit_batch_captured_mode(tok):
    plan = compile_edit(EditSpec(source=BASE, target="lofi marimba with warm drums"), tok, 4)
    maps = np.random.default_rng(0).random((10, 4, 2, T), dtype=np.float32)
    batch = EditBatch([plan], cfg=True, num_heads=2, captured_maps=maps)
    x = batch.inputs(3, 10)
    # The source is not run: rows are [target, null target].
    assert batch.layout.names == ("target_1",) and batch.layout.source is None
    assert x.use_captured.tolist() == [1, 0]
    assert x.src_row.tolist() == [0, 1]
    np.testing.assert_array_equal(x.captured[:, 0], maps[3])
    assert (x.captured[:, 1] == 0).all()
    np.testing.assert_array_equal(x.mapper[0], plan.mapper)
    with pytest.raises(InvalidRequestError, match="captured maps cover 10 steps"):
        batch.inputs(3, 11)
    wrong_heads = np.zeros((10, 4, 3, T), dtype=np.float32)
    with pytest.raises(InvalidRequestError, match=r"needs \[steps, 4, 2, 64\]"):
        EditBatch([plan], cfg=True, num_heads=2, captured_maps=wrong_heads)


def test_edit_batch_plain_and_source_check(tok):
    batch = EditBatch.plain(2, cfg=True, T=T, num_layers=3, num_heads=2)
    x = batch.inputs(0, 5)
    for r in range(4):
        _identity_row(x, r)
    assert batch.layout.names == ("prompt_1", "prompt_2")
    shapes = ModelShapes(num_layers=3, hidden_size=16, num_heads=2, num_codebooks=4)
    y = EditBatch.plain(rows_cond=1, cfg=False, shapes=shapes).inputs(0, 5)
    assert (y.mapper.shape, y.blend.shape, y.captured.shape) == ((1, T, T), (1, 3), (3, 1, 2, T))
    a = compile_edit(EditSpec(source=BASE, target=BASE), tok, 3)
    b = compile_edit(EditSpec(source="lofi guitar", target="lofi piano"), tok, 3)
    with pytest.raises(InvalidRequestError, match="all targets must edit one source"):
        EditBatch([a, b], cfg=False, num_heads=2)


def _edited_maps(p_own: np.ndarray, x: EditStepInputs, layer: int) -> np.ndarray:
    """docs/design.md "The edit", one layer: p_own [rows, heads, T] -> P [rows, heads, T]."""
    out = np.empty_like(p_own)
    for r in range(p_own.shape[0]):
        p_src = x.captured[layer, r] if x.use_captured[r] else p_own[x.src_row[r]]
        base = p_src @ x.mapper[r]
        inj = (x.alpha[r] * base + (1 - x.alpha[r]) * p_own[r]) * x.weight[r]
        inj = x.window[r] * inj + (1 - x.window[r]) * p_own[r]
        out[r] = p_own[r] - (1 - x.blend[r, layer]) * (p_own[r] - inj)
    return out


def test_step_inputs_follow_the_edit_formula(tok):
    plan = compile_edit(EditSpec(source=BASE, target="lofi marimba with warm drums",
                                 cross_blend="hard"), tok, 2)
    x = EditBatch([plan], cfg=True, num_heads=2).inputs(0, 10)
    rng = np.random.default_rng(1)
    p_own = np.zeros((4, 2, T), dtype=np.float32)  # rows 0/2 source length 6, 1/3 target 7
    for r, n in enumerate([6, 7, 6, 7]):
        logits = rng.normal(size=(2, n)).astype(np.float32)
        p_own[r, :, :n] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p = _edited_maps(p_own, x, layer=0)
    np.testing.assert_array_equal(p[[0, 2, 3]], p_own[[0, 2, 3]])  # identity rows: exact
    want = p_own[0] @ plan.mapper  # hard blend, window on: the injected map
    np.testing.assert_allclose(p[1], want, rtol=0, atol=1e-7)
    np.testing.assert_allclose(p[1, :, 1] + p[1, :, 2], p_own[0, :, 1], atol=1e-7)  # piano
    assert (p[1, :, 7:] == 0).all()  # pads stay 0


def test_engine_imports_no_torch():
    code = ("import sys, editgen.engine.tokenizer, editgen.engine.edit;"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
