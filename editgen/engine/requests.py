"""A request's rows and the state it carries between steps (the engine core steps it).

Rows are laid out by its RowLayout (editgen.engine.rows): the conditional rows, then, with
classifier-free guidance, the same rows with null text. A request owns its delay
pattern, code sequence, sampler, edit tensors and hooks; the backend only holds its
slots' caches and static edit tensors."""

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


class RequestEdits(Protocol):
    """A request's edit tensors (an EditBatch): static rows, and what changes per step."""

    layout: RowLayout
    row_inputs: EditStepInputs

    def step_edits(self, step: int, num_steps: int) -> StepEdits: ...


# Called with (position, codes [rows_cond, K]) after sampling; may overwrite rows in place.
CodeOverride = Callable[[int, np.ndarray], None]
# Called with (step, cross_attn [layers, rows_cond, heads, T]) after each step.
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
                 recorders: Sequence[MapRecorder] = ()):
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
        self.steps = shapes.steps_for_frames(options.frames(shapes))
        self.pattern = DelayPattern.for_shapes(shapes, self.steps + 1)
        self.overrides, self.recorders = tuple(overrides), tuple(recorders)
        self.sampler = Sampler(self.rows_cond, seed=options.seed, top_k=options.top_k,
                               temperature=options.temperature, greedy=options.greedy)
        # [rows_cond, K, steps + 1]: position 0 is the BOS frame (pad id)
        self.sequence = np.full((self.rows_cond, shapes.num_codebooks, self.steps + 1), shapes.pad_token_id,
                                dtype=np.int64)
        self._frame = np.empty((self.rows, shapes.num_codebooks), dtype=np.int64)
        self.step = 0  # the next position to run
        self.slots: np.ndarray | None = None  # [rows] while admitted
        self.state = State.WAITING
        self.error: BaseException | None = None

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
        return self.edits.step_edits(self.step, self.steps)

    def completed_frames(self) -> int:
        """Frames every codebook of every row has sampled so far."""
        return self.pattern.completed_frames(self.step)

    def codes_so_far(self, name: str, frames: int) -> np.ndarray:
        """Codes [K, frames] of conditional row `name`, the delay pattern removed (a copy);
        frames <= completed_frames()."""
        assert frames <= self.completed_frames() or self.state is State.FINISHED, (frames, self.step)
        return self.pattern.to_frames(self.sequence[self.layout.index(name)], frames)

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
        for override in self.overrides:
            override(t + 1, codes)
        self.sequence[:, :, t + 1] = codes
        for record in self.recorders:
            record(t, maps)
        self.step = t + 1
        if self.step == self.steps:
            self.state = State.FINISHED

    def codes(self) -> np.ndarray:
        """[rows_cond, K, frames] int64, the delay pattern removed (once finished)."""
        if self.state is not State.FINISHED:
            raise RuntimeError(f"request is {self.state.value}, its codes are not complete")
        return self.pattern.to_frames(self.sequence)
