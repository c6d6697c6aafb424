"""A request's rows and the state it carries between steps (the engine core steps it).

Rows are laid out by its RowLayout (editgen.engine.rows): the conditional rows, then, with
classifier-free guidance, the same rows with null text. A request owns its windows, the
current window's delay pattern and code sequence, the song's codes, its sampler, edit
tensors and hooks; the backend only holds its slots' caches and static edit tensors.

Long-form (editgen.engine.windows): a request longer than one window runs its windows one
after the other. Every row's context frames (the first frames of a window after the
first) are forced to that row's own codes, after the hooks, so source and targets are
forced in lock-step; when a window ends the next starts at position 0 and `new_window`
tells the engine core to admit the rows again. The sampler's per-row streams go on
across windows (every step draws, forced or not), so a long request's codes depend on its
seed, W and C, and on nothing else."""

from __future__ import annotations

import enum
from typing import Callable, Protocol, Sequence

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.delay import DelayPattern
from editgen.engine.edit.step_inputs import EditBatch, EditStepInputs, StepEdits
from editgen.engine.options import GenerationOptions
from editgen.engine.rows import RowLayout
from editgen.engine.sampling import Sampler, classifier_free_guidance
from editgen.engine.tokenizer import TokenizedPrompt
from editgen.engine.windows import WindowPlan


class RequestEdits(Protocol):
    """A request's edit tensors (an EditBatch): static rows, and what changes per step."""

    layout: RowLayout
    row_inputs: EditStepInputs

    def step_edits(self, step: int, num_steps: int) -> StepEdits: ...


# Called with (frames [K]: the song frame each codebook holds at the new position, -1 where
# the delay pattern pads; codes [rows_cond, K]) after sampling; may overwrite rows in place.
CodeOverride = Callable[[np.ndarray, np.ndarray], None]
# Called with (song step, cross_attn [layers, rows_cond, heads, T]) after each step.
MapRecorder = Callable[[int, np.ndarray], None]


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Request:
    """One generation (plain, any edit mode, capture): `prompts` are its conditional rows, in
    the order of `edits.layout` (plain generation: prompt_1..prompt_n)."""

    def __init__(self, shapes: ModelShapes, prompts: Sequence[TokenizedPrompt], options: GenerationOptions, *,
                 edits: RequestEdits | None = None, overrides: Sequence[CodeOverride] = (),
                 recorders: Sequence[MapRecorder] = (), windows: WindowPlan | None = None):
        """`windows`: the request's WindowPlan when its builder made one (with a configured
        maximum length); by default WindowPlan.for_options."""
        if not prompts:
            raise ValueError("a request needs at least one prompt")
        self.options = options
        self.prompts = tuple(prompts)
        self.edits = edits if edits is not None else EditBatch.plain(len(prompts), cfg=options.cfg, shapes=shapes)
        self.layout = self.edits.layout
        if (self.layout.rows_cond, self.layout.cfg) != (len(prompts), options.cfg):
            raise ValueError(f"rows {self.layout.names} (guidance {self.layout.cfg}) do not fit {len(prompts)} "
                             f"prompts with guidance {options.cfg}")
        self.rows_cond, self.rows = self.layout.rows_cond, self.layout.rows
        self.shapes = shapes
        self.window_plan = windows if windows is not None else WindowPlan.for_options(shapes, options)
        self.frames = self.window_plan.frames  # the song's
        self.steps = self.window_plan.total_steps  # decoder steps over every window
        self.overrides, self.recorders = tuple(overrides), tuple(recorders)
        self.sampler = Sampler(self.rows_cond, seed=options.seed, top_k=options.top_k,
                               temperature=options.temperature, greedy=options.greedy)
        # [rows_cond, K, frames]: the song's codes; a window's frames are copied in when it ends
        self.song_codes = np.full((self.rows_cond, shapes.num_codebooks, self.frames), shapes.pad_token_id,
                                  dtype=np.int64)
        self._frame = np.empty((self.rows, shapes.num_codebooks), dtype=np.int64)
        self.steps_done = 0  # steps run, over every window
        self.new_window = False  # a window ended and the next began: its rows need admitting again
        self.text_states: tuple[np.ndarray, np.ndarray] | None = None  # (hidden, mask) as admitted
        self.slots: np.ndarray | None = None  # [rows] while admitted
        self.state = State.WAITING
        self.error: BaseException | None = None
        self._open_window(0)

    def _open_window(self, index: int) -> None:
        self.window_index, self.window = index, self.window_plan.windows[index]
        self.window_steps = self.window_plan.steps(index)
        self.pattern = DelayPattern.for_shapes(self.shapes, self.window_steps + 1)
        # [rows_cond, K, window_steps + 1]: position 0 is the BOS frame (pad id)
        self.sequence = np.full((self.rows_cond, self.shapes.num_codebooks, self.window_steps + 1),
                                self.shapes.pad_token_id, dtype=np.int64)
        self.step = 0  # the next position of this window to run

    @property
    def wants_maps(self) -> bool:
        return bool(self.recorders)

    @property
    def map_means_only(self) -> bool:
        """Its recorders read only the maps' mean over layers and heads (hooks.MeanMaps)."""
        return all(getattr(record, "means_only", False) for record in self.recorders)

    @property
    def done(self) -> bool:
        return self.state in (State.FINISHED, State.CANCELLED, State.FAILED)

    def frame(self) -> np.ndarray:
        """Codes [rows, K] of this step's frame, the delay pattern applied."""
        t = self.step
        self._frame[: self.rows_cond] = self.pattern.apply(self.sequence[:, :, t], t)
        if self.layout.cfg:  # the null-text rows repeat the conditional rows' codes
            self._frame[self.rows_cond:] = self._frame[: self.rows_cond]
        return self._frame

    def step_edits(self) -> StepEdits:
        """This step's edit tensors, on the song's time axis."""
        return self.edits.step_edits(self.window.start + self.step, self.window_plan.song_steps)

    def completed_frames(self) -> int:
        """Song frames every codebook of every row has sampled so far."""
        if self.state is State.FINISHED:
            return self.frames
        return max(self.window.new_from, self.window.start + self.pattern.completed_frames(self.step))

    def codes_so_far(self, name: str, frames: int, start: int = 0) -> np.ndarray:
        """Codes [K, frames - start] of song frames [start, frames) of conditional row `name`,
        the delay pattern removed (a copy); frames <= completed_frames()."""
        assert start <= frames <= self.completed_frames(), (start, frames, self.step)
        row = self.layout.index(name)
        w = self.window
        if self.state is State.FINISHED or frames <= w.new_from:
            return self.song_codes[row, :, start:frames].copy()
        current = self.pattern.to_frames(self.sequence[row], frames - w.start)  # [K, frames - w.start]
        return np.concatenate([self.song_codes[row, :, start:w.start], current[:, max(0, start - w.start):]], axis=1)

    def sampling_inputs(self, books: int) -> tuple[np.ndarray, ...]:
        """This step's rows of a SamplingBatch, rows relative to the request's first:
        (cond_rows, uncond_rows, guidance, temperature, top_k, uniforms). Draws this step's
        uniforms: call once per step, then advance(codes=...)."""
        o, n = self.options, self.rows_cond
        cond = np.arange(n, dtype=np.int64)
        uniforms = self.sampler.draw(books)
        return (cond, cond + n if self.layout.cfg else cond, np.full(n, o.guidance_scale, np.float32),
                np.full(n, o.temperature, np.float64), np.full(n, 0 if o.greedy else o.top_k, np.int64),
                np.zeros((n, books)) if uniforms is None else uniforms)

    def advance(self, maps: np.ndarray | None, *, logits: np.ndarray | None = None,
                codes: np.ndarray | None = None) -> None:
        """One step's result: logits [rows, K, vocab] (sampled here), or the codes [rows_cond,
        K] a backend sampled from sampling_inputs(); maps [layers, rows_cond, heads, T] (or
        [1, rows_cond, 1, T] means) when it wants them."""
        t = self.step
        if codes is None:
            if self.options.cfg:
                logits = classifier_free_guidance(logits, self.options.guidance_scale)
            codes = self.sampler(logits)  # [rows_cond, K]
        else:
            codes = np.array(codes, dtype=np.int64)  # overrides write into it
        frames = self._song_frames(t + 1)
        for override in self.overrides:
            override(frames, codes)
        self._force_context(frames, codes)
        self.sequence[:, :, t + 1] = codes
        song_step = self.window.start + t
        if song_step >= self.window.new_from:  # a context step's maps were recorded by the window before
            for record in self.recorders:
                record(song_step, maps)
        self.step = t + 1
        self.steps_done += 1
        if self.step == self.window_steps:
            self._end_window()

    def _song_frames(self, position: int) -> np.ndarray:
        """int64 [K]: the song frame each codebook holds at `position` of this window, -1 where
        the delay pattern pads."""
        return np.where(self.pattern.forced[:, position], -1, self.pattern.frame_of(position) + self.window.start)

    def _force_context(self, frames: np.ndarray, codes: np.ndarray) -> None:
        """Every row's codes at this window's context frames are its own earlier ones."""
        books = np.flatnonzero((frames >= 0) & (frames < self.window.new_from))
        if books.size:
            codes[:, books] = self.song_codes[:, books, frames[books]]

    def _end_window(self) -> None:
        w = self.window
        self.song_codes[:, :, w.start:w.end] = self.pattern.to_frames(self.sequence)
        if self.window_index + 1 == len(self.window_plan.windows):
            self.state = State.FINISHED
        else:
            self._open_window(self.window_index + 1)
            self.new_window = True

    def codes(self) -> np.ndarray:
        """[rows_cond, K, frames] int64, the delay pattern removed (once finished)."""
        if self.state is not State.FINISHED:
            raise RuntimeError(f"request is {self.state.value}, its codes are not complete")
        return self.song_codes
