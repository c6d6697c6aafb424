"""Long-form requests on random:tiny (torch backend) with short windows: W = 2 s, C = 0.6 s,
so a 7 s request runs as 5 windows. The guarantees of one window hold across windows,
and a request that fits one window is what it was before windows existed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from editgen.engine.capture import SourceCapture
from editgen.engine.core import EngineCore, StepObserver
from editgen.engine.edit import EditSpec
from editgen.engine.jobs import (Region, capture_source, edit, edit_from_capture, edit_job, generate, generate_job,
                                 long_capture)
from editgen.engine.options import GenerationOptions
from editgen.engine.windows import WindowPlan
from editgen.errors import TooLongError, WindowError

SRC = "lofi piano with warm drums"
TGT = "lofi marimba with warm drums"
LONG = GenerationOptions(seconds=7.0, seed=3, window_seconds=2.0, context_seconds=0.6)
GOLDEN = Path(__file__).parent / "data" / "one_window_codes_712c4af.npz"


def test_window_plan_of_a_long_request(tiny_backend):
    plan = WindowPlan.for_options(tiny_backend.shapes, LONG)
    assert [(w.start, w.end, w.context) for w in plan.windows] == [
        (0, 100, 0), (70, 170, 30), (140, 240, 30), (210, 310, 30), (280, 350, 30)]
    assert plan.song_steps == 353 and plan.total_steps == 4 * 103 + 73


@pytest.fixture(scope="module")
def long_edit(tiny_backend):
    return edit(tiny_backend, [EditSpec(source=SRC, target=TGT)], LONG)


def test_identity_edit_reproduces_the_source_over_windows(tiny_backend):
    """Target = source, self-injection on (the default setting): equal codes and maps in
    every window, the forced contexts included."""
    r = edit(tiny_backend, [EditSpec(source=SRC, target=SRC)], LONG)
    assert len(r.windows.windows) == 5
    np.testing.assert_array_equal(r.edited_codes[0], r.source_codes)
    np.testing.assert_array_equal(r.mean_maps[:, 1], r.mean_maps[:, 0])


def test_source_row_of_a_long_edit_equals_the_long_generation(tiny_backend, long_edit):
    plain = generate(tiny_backend, SRC, LONG)
    np.testing.assert_array_equal(long_edit.source_codes, plain.codes)
    assert (long_edit.edited_codes[0] != long_edit.source_codes).mean() > 0.5  # and the edit is real
    assert plain.wav.shape == (1, 350 * 640)


def test_a_request_that_fits_one_window_is_bit_identical_to_before_windows(tiny_backend):
    """Codes recorded at 712c4af, main before windows (tests/data: generate, paired,
    real-audio and region edits of 4 s, seed 11), equal what the engine gives now."""
    golden = np.load(GOLDEN)
    o = GenerationOptions(seconds=4.0, seed=11)
    spec = EditSpec(source=SRC, target=TGT)
    audio = np.random.default_rng(5).integers(0, 2048, (4, 150))
    np.testing.assert_array_equal(generate(tiny_backend, SRC, o).codes, golden["generate"])
    paired = edit(tiny_backend, [spec], o)
    np.testing.assert_array_equal(paired.source_codes, golden["edit_source"])
    np.testing.assert_array_equal(paired.edited_codes[0], golden["edit_target"])
    np.testing.assert_array_equal(edit(tiny_backend, [spec], o, audio_codes=audio).edited_codes[0],
                                  golden["audio_target"])
    region = edit(tiny_backend, [EditSpec(source=SRC, target=TGT, setting="hard")], o, region=Region(1.0, 2.5))
    np.testing.assert_array_equal(region.edited_codes[0], golden["region_target"])


def test_region_edit_across_a_window_seam_copies_the_source_outside(tiny_backend):
    """Region 1.5-3.1 s on the song's time: it spans the end of window 0 (2 s), the context
    of window 1 (1.4-2 s) and window 1's end (3.4 s)."""
    r = edit(tiny_backend, [EditSpec(source=SRC, target=TGT)], LONG, region=Region(1.5, 3.1))
    inside = Region(1.5, 3.1).frame_mask(350, 50)
    np.testing.assert_array_equal(r.edited_codes[0][:, ~inside], r.source_codes[:, ~inside])
    assert (r.edited_codes[0][:, inside] != r.source_codes[:, inside]).mean() > 0.5


class SourceRowProbe(StepObserver):
    """Records, at every step of one request, the position and the source row's codes as
    fed to the backend."""

    def __init__(self):
        self.seen = []

    def before_step(self, batch):
        self.seen.append((int(batch.positions[0]), batch.codes[0].copy()))


def test_long_real_audio_edit_forces_the_source_on_the_audio_in_every_window(tiny_backend):
    audio = np.random.default_rng(1).integers(0, 2048, (4, 350))
    job = edit_job(tiny_backend, [EditSpec(source=SRC, target=TGT)], LONG, audio_codes=audio)
    probe = SourceRowProbe()
    EngineCore(tiny_backend, max_rows=4, observers=[probe]).run(job.request)
    result = job.result()
    np.testing.assert_array_equal(result.source_codes, audio)
    plan = job.request.window_plan
    starts = [i for i, (position, _) in enumerate(probe.seen) if position == 0]
    assert len(starts) == len(plan.windows) == 5  # every window starts at position 0 again
    for window, first in zip(plan.windows, starts):
        for position in range(1, plan.steps(plan.windows.index(window))):  # each fed frame
            _, codes = probe.seen[first + position]
            for k in range(4):  # codebook k holds song frame start + position - 1 - k
                frame = window.start + position - 1 - k
                if window.start <= frame < window.end:
                    assert codes[k] == audio[k, frame], (window, position, k)
    assert (result.edited_codes[0] != audio).mean() > 0.5


def test_step_windows_are_on_the_songs_time_axis(tiny_backend):
    """`default=0.5:1.0` injects from song step floor(0.5 (N + 1)) = 177 of N = 353: before it
    the target is a plain generation of the target prompt (no self-injection), in every
    window, though each window has its own 103 steps."""
    spec = EditSpec(source=SRC, target=TGT, setting="hard", windows={"default": "0.5:1.0"})
    r = edit(tiny_backend, [spec], LONG)
    plain = generate(tiny_backend, TGT, LONG)
    np.testing.assert_array_equal(r.edited_codes[0][:, :174], plain.codes[:, :174])  # codebook 3 of frame 174: step 177
    assert (r.edited_codes[0][:, 185:] != plain.codes[:, 185:]).mean() > 0.5


def test_long_capture_keeps_codes_and_reruns_the_source(tiny_backend, long_edit, tmp_path):
    cap = capture_source(tiny_backend, SRC, LONG)
    assert long_capture(cap) and cap.maps is None
    np.testing.assert_array_equal(cap.codes, long_edit.source_codes)
    cap.save(tmp_path / "long.npz")
    back = SourceCapture.load(tmp_path / "long.npz")
    assert back.maps is None and back.options == LONG  # W and C recorded
    r = edit_from_capture(tiny_backend, back, [EditSpec(source=SRC, target=TGT)])
    np.testing.assert_array_equal(r.edited_codes, long_edit.edited_codes)


def test_a_long_request_is_the_same_whatever_shares_its_steps(tiny_backend, long_edit):
    """Its rows are admitted again at each window, in the same slots, while others join
    and leave: its codes are those it has alone. Reproducible from seed, W and C; another
    context changes them."""
    core = EngineCore(tiny_backend, max_rows=8)
    job = edit_job(tiny_backend, [EditSpec(source=SRC, target=TGT)], LONG)
    core.submit(job.request)
    others = [generate_job(tiny_backend, "dub techno", GenerationOptions(seconds=1.0, seed=s)) for s in range(3)]
    step = 0
    while core.has_work:
        if step in (40, 150, 330):
            core.submit(others.pop().request)
        core.step()
        step += 1
    np.testing.assert_array_equal(job.result().edited_codes, long_edit.edited_codes)
    other_context = GenerationOptions(seconds=7.0, seed=3, window_seconds=2.0, context_seconds=0.8)
    assert not np.array_equal(generate(tiny_backend, SRC, other_context).codes, long_edit.source_codes)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"context_seconds": -1.0}, WindowError, r"context_seconds must be >= 0, got -1"),
    ({"window_seconds": 5.0, "context_seconds": 4.5}, WindowError,
     r"window_seconds 5 must be at least context_seconds \+ 1 s \(5\.5 s\)"),
    ({"window_seconds": 41.0}, WindowError, r"window_seconds 41 is more than the model's 40\.90 s"),
    ({"seconds": 601.0}, TooLongError, r"601 s is longer than the maximum of 600 s"),
])
def test_bad_windows_and_lengths_are_one_line(tiny_backend, kwargs, error, message):
    with pytest.raises(error, match=message):
        WindowPlan.for_options(tiny_backend.shapes, GenerationOptions(**kwargs))
