"""Invariants of Prompt-to-Prompt editing on random:tiny (torch backend)."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.engine.edit import EditSpec
from editgen.engine.jobs import Region, capture_source, edit, edit_from_capture
from editgen.engine.options import GenerationOptions
from editgen.engine.jobs import generate
from editgen.errors import InvalidRequestError

SRC = "lofi piano with warm drums"
TGT = "lofi marimba with warm drums"  # marimba: two pieces where piano has one
# Sampling, top-k 250, guidance 3; 8 s: the README's guarantees must hold on clips long
# enough for a batch-dependent kernel to show (a 1 s clip hid one).
OPTS = GenerationOptions(seconds=8.0, seed=3)


@pytest.fixture(scope="module")
def paired(tiny_backend):
    return edit(tiny_backend, [EditSpec(source=SRC, target=TGT)], OPTS, progress=False)


IDENTITY_SCHEDULES = {  # every named setting, and custom cross/self schedules and windows
    "editgen-code": {}, "paper-text": {"setting": "paper-text"}, "hard": {"setting": "hard"},
    "self-full": {"self_blend": "full"}, "custom": {"cross_blend": "0.9,0.1", "self_blend": "constant:0.3",
                                                    "self_window": "0.2:0.9", "windows": {"default": "0.1:0.6"}},
}


@pytest.mark.parametrize("schedule", IDENTITY_SCHEDULES)
@pytest.mark.parametrize("op", ["replace", "refine"])
def test_identity_edit_reproduces_source(tiny_backend, op, schedule):
    """Target = source: exact under any setting, self-injection included (S_own - b (S_own - S_src)
    is S_own bit for bit when the rows are equal)."""
    spec = EditSpec(source=SRC, target=SRC, op=op, **IDENTITY_SCHEDULES[schedule])
    r = edit(tiny_backend, [spec], OPTS, progress=False)
    np.testing.assert_array_equal(r.edited_codes[0], r.source_codes)
    np.testing.assert_array_equal(r.mean_maps[:, 1], r.mean_maps[:, 0])


def test_self_injection_zero_equals_none_and_changes_the_edit(tiny_backend):
    """b = 0 at every layer is no injection (bit for bit); the released code's b_i is live."""
    none = edit(tiny_backend, [EditSpec(source=SRC, target=TGT, setting="hard")], OPTS, progress=False)
    zero = edit(tiny_backend, [EditSpec(source=SRC, target=TGT, self_blend="constant:0")], OPTS, progress=False)
    code = edit(tiny_backend, [EditSpec(source=SRC, target=TGT)], OPTS, progress=False)  # editgen-code
    np.testing.assert_array_equal(zero.edited_codes, none.edited_codes)
    np.testing.assert_array_equal(code.source_codes, none.source_codes)  # the source is never edited
    assert (code.edited_codes != none.edited_codes).mean() > 0.3


def test_reweight_by_one_is_a_no_op(tiny_backend):
    spec = EditSpec(source=SRC, op="reweight", word_weights={w: 1.0 for w in SRC.split()})
    r = edit(tiny_backend, [spec], OPTS, progress=False)
    np.testing.assert_array_equal(r.edited_codes[0], r.source_codes)


def test_source_row_equals_plain_generation(tiny_backend, paired):
    plain = generate(tiny_backend, SRC, OPTS, progress=False)
    np.testing.assert_array_equal(paired.source_codes, plain.codes)


def test_blend_constant_one_equals_plain_target(tiny_backend):
    spec = EditSpec(source=SRC, target=TGT, cross_blend="constant:1", self_blend="off")
    r = edit(tiny_backend, [spec], OPTS, progress=False)
    plain = generate(tiny_backend, TGT, OPTS, progress=False)
    np.testing.assert_array_equal(r.edited_codes[0], plain.codes)


def test_real_edit_changes_the_target(paired):
    assert (paired.edited_codes[0] != paired.source_codes).mean() > 0.5


def test_reweight_changes_attention_to_the_word(tiny_backend):
    """c = 2 on 'piano' doubles (hard cross blend: at every layer) the injected map there."""
    up = edit(tiny_backend, [EditSpec(source=SRC, op="reweight", word_weights={"piano": 2.0})], OPTS,
              progress=False)
    piano = up.plans[0].target.word_tokens(1)
    assert up.mean_maps[0, 1, list(piano)].sum() > up.mean_maps[0, 0, list(piano)].sum() * 1.2


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_captured_mode_equals_paired_mode(tiny_backend, paired, dtype):
    """With self-injection (the default setting) the source row re-runs teacher-forced on the
    captured codes: the same codes and maps as paired mode."""
    cap = capture_source(tiny_backend, SRC, OPTS, dtype=dtype, progress=False)
    np.testing.assert_array_equal(cap.codes, paired.source_codes)
    r = edit_from_capture(tiny_backend, cap, [EditSpec(source=SRC, target=TGT)], progress=False)
    np.testing.assert_array_equal(r.edited_codes, paired.edited_codes)
    # Maps agree to float32 rounding (averages are taken in another order); an fp16
    # capture is within fp16 rounding of the probabilities.
    atol = 1e-6 if dtype == np.float32 else 1e-3
    np.testing.assert_allclose(r.mean_maps, paired.mean_maps, atol=atol, rtol=0)


def test_edit_without_guidance(tiny_backend):
    """guidance 1: no null-text rows; the rows are [source, target] alone (this crashed with
    two or more prompts: the frame copied conditional codes into rows that do not exist)."""
    opts = GenerationOptions(seconds=2.0, seed=3, guidance_scale=1.0)
    r = edit(tiny_backend, [EditSpec(source=SRC, target=SRC)], opts, progress=False)
    np.testing.assert_array_equal(r.edited_codes[0], r.source_codes)  # identity still exact
    plain = generate(tiny_backend, SRC, opts, progress=False)
    np.testing.assert_array_equal(r.source_codes, plain.codes)


def test_captured_mode_without_self_injection_equals_paired(tiny_backend):
    """No self-injection: the source is not run; targets read the captured cross maps."""
    spec = EditSpec(source=SRC, target=TGT, setting="paper-text")
    paired = edit(tiny_backend, [spec], OPTS, progress=False)
    cap = capture_source(tiny_backend, SRC, OPTS, dtype=np.float32, progress=False)
    r = edit_from_capture(tiny_backend, cap, [spec], progress=False)
    np.testing.assert_array_equal(r.edited_codes, paired.edited_codes)


def test_capture_file_round_trip(tiny_backend, tmp_path):
    cap = capture_source(tiny_backend, SRC, OPTS, progress=False)
    cap.save(tmp_path / "src.npz")
    back = type(cap).load(tmp_path / "src.npz")
    assert back.prompt == SRC and back.options == OPTS and back.shapes == cap.shapes
    np.testing.assert_array_equal(back.maps, cap.maps)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidRequestError, match=r"bad\.npz is not an editgen capture \(not an \.npz archive\)"):
        type(cap).load(tmp_path / "bad.npz")


def test_region_edit_copies_source_outside(tiny_backend):
    region = Region(2.0, 5.0)
    r = edit(tiny_backend, [EditSpec(source=SRC, target=TGT)], OPTS, region=region, progress=False)
    inside = region.frame_mask(r.source_codes.shape[1], 50)
    np.testing.assert_array_equal(r.edited_codes[0][:, ~inside], r.source_codes[:, ~inside])
    assert (r.edited_codes[0][:, inside] != r.source_codes[:, inside]).mean() > 0.5


def test_teacher_forced_source_follows_audio_codes(tiny_backend):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(4, 40))
    r = edit(tiny_backend, [EditSpec(source=SRC, target=TGT)], OPTS, audio_codes=codes, progress=False)
    np.testing.assert_array_equal(r.source_codes, codes)
    assert r.edited_codes.shape == (1, 4, 40)


def test_batched_targets_equal_one_at_a_time(tiny_backend, paired):
    specs = [EditSpec(source=SRC, target=TGT), EditSpec(source=SRC, target=SRC + " and bass", op="refine")]
    both = edit(tiny_backend, specs, OPTS, progress=False)
    alone = edit(tiny_backend, specs[1:], OPTS, progress=False)
    np.testing.assert_array_equal(both.edited_codes[0], paired.edited_codes[0])
    np.testing.assert_array_equal(both.edited_codes[1], alone.edited_codes[0])


def test_region_syntax_errors():
    with pytest.raises(InvalidRequestError, match="START:END"):
        Region.parse("2-5")
    with pytest.raises(InvalidRequestError, match="start < end"):
        Region.parse("5:2")
