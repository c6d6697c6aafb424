"""Every job the engine runs, built in one place: plain generation, paired edits (source
and targets in one batch), edits from a capture (targets from source maps recorded
earlier), captures, real-audio edits (the source row teacher-forced on EnCodec codes of a
recording) and time-region edits.

A Job is a Request (its rows named by a RowLayout) plus how to turn its codes into a
result, and its outputs by name: each is a row of the request or codes known in advance
(a captured source). Streaming and the server read outputs by name, never by row index."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from editgen.engine.capture import SourceCapture
from editgen.engine.contract import Backend
from editgen.engine.core import run_alone
from editgen.engine.delay import DelayPattern
from editgen.engine.edit import EditBatch, EditPlan, EditSpec, compile_edit
from editgen.engine.hooks import ForceFrames, MeanMaps, RowMaps
from editgen.engine.options import GenerationOptions
from editgen.engine.requests import Request
from editgen.engine.rows import SOURCE, RowLayout
from editgen.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True)
class Region:
    """Seconds [start, end) that are edited; outside it the targets copy the source."""

    start: float
    end: float

    def __post_init__(self):
        if not (0 <= self.start < self.end):
            raise InvalidRequestError(f"region {self.start}:{self.end} must satisfy 0 <= start < end")

    @classmethod
    def parse(cls, text: str) -> "Region":
        try:
            start, end = (float(x) for x in text.split(":"))
        except ValueError:
            raise InvalidRequestError(f"region {text!r} must look like START:END in seconds, e.g. 2.0:5.0") from None
        return cls(start, end)

    def frame_mask(self, frames: int, frame_rate: int) -> np.ndarray:
        """bool [frames], True inside the region."""
        if self.start * frame_rate >= frames:
            raise InvalidRequestError(f"region starts at {self.start} s, after the audio ends "
                                      f"({frames / frame_rate:.2f} s)")
        t = np.arange(frames) / frame_rate
        return (t >= self.start) & (t < self.end)


@dataclasses.dataclass
class Generated:
    wav: np.ndarray  # [channels, samples] float32 (channels: the model's, 1 or 2)
    codes: np.ndarray  # [K, frames] int64
    sample_rate: int


@dataclasses.dataclass
class EditResult:
    source_codes: np.ndarray  # [K, frames]
    edited_codes: np.ndarray  # [targets, K, frames]
    plans: tuple[EditPlan, ...]
    mean_maps: np.ndarray  # [steps, 1 + targets, T] cross-attention over layers and heads; row 0 source
    options: GenerationOptions


class Job:
    """A request ready for an engine core, and how to turn its codes into a result.
    `edit` / `generate` / ... run one to the end; a server submits `job.request` to its
    shared EngineCore and calls `job.result()` when it finished.

    outputs: name -> the request's row of that name, or codes [K, frames] known in advance."""

    def __init__(self, request: Request, finish: Callable[[Request], object],
                 outputs: Mapping[str, str | np.ndarray]):
        for name, source in outputs.items():
            if isinstance(source, str):
                request.layout.index(source)  # KeyError for a row the request does not have
        self.request, self._finish, self.outputs = request, finish, dict(outputs)

    def result(self):
        return self._finish(self.request)

    def settled_frames(self) -> int:
        """Frames of every output known so far (all of them once the request finished)."""
        return self.request.completed_frames()

    def codes_so_far(self, output: str, frames: int) -> np.ndarray:
        """Codes [K, frames] of `output` (a copy), frames <= settled_frames()."""
        source = self.outputs[output]
        if isinstance(source, str):
            return self.request.codes_so_far(source, frames)
        return source[:, :frames].copy()


def run_job(backend: Backend, job: Job, progress: bool = True):
    run_alone(backend, job.request, progress)
    return job.result()


def compile_specs(backend: Backend, specs: Sequence[EditSpec]) -> tuple[EditPlan, ...]:
    if not specs:
        raise InvalidRequestError("an edit needs at least one target")
    return tuple(compile_edit(s, backend.tokenizer, backend.shapes.num_layers) for s in specs)


def options_for_audio(options: GenerationOptions, codes: np.ndarray, frame_rate: int) -> GenerationOptions:
    """Real-audio edits last as long as the audio."""
    return dataclasses.replace(options, seconds=codes.shape[-1] / frame_rate)


def reruns_source(specs: Sequence[EditSpec]) -> bool:
    """Whether an edit from a capture re-runs the source: self-attention injection needs
    the source's self-attention maps, which a capture does not hold (they grow as
    steps^2), so the source row runs again, teacher-forced on the captured codes."""
    return any(s.injects_self for s in specs)


# -- the jobs ---------------------------------------------------------------------------

def generate_job(backend: Backend, prompt: str, options: GenerationOptions) -> Job:
    """Codes of one prompt; the result is Generated (decoded audio). Output: prompt_1."""
    request = Request(backend.shapes, [backend.tokenizer.encode(prompt)], options)
    row = request.layout.names[0]

    def finish(r: Request) -> Generated:
        codes = r.codes()
        return Generated(backend.decode_audio(codes)[0], codes[0], backend.shapes.sample_rate)

    return Job(request, finish, {row: row})


def edit_job(backend: Backend, specs: Sequence[EditSpec], options: GenerationOptions, *,
             region: Region | None = None, audio_codes: np.ndarray | None = None) -> Job:
    """Paired mode: rows [source, target_1..n]; `audio_codes` [K, frames] teacher-forces the
    source. Outputs: source, target_1..target_n."""
    plans = compile_specs(backend, specs)
    if audio_codes is not None:
        options = options_for_audio(options, audio_codes, backend.shapes.frame_rate)
    return _paired_job(backend, plans, options, region, audio_codes)


def _paired_job(backend: Backend, plans: tuple[EditPlan, ...], options: GenerationOptions,
                region: Region | None, source_codes: np.ndarray | None) -> Job:
    """Rows [source, target_1..n]; `source_codes` [K, frames] teacher-forces the source."""
    shapes = backend.shapes
    pattern = _pattern(shapes, options)
    batch = EditBatch(plans, cfg=options.cfg, num_heads=shapes.num_heads)
    layout = batch.layout
    prompts = [plans[0].source] + [p.target for p in plans]
    overrides = [] if source_codes is None else [_teacher_force(pattern, layout, SOURCE, source_codes)]
    if region is not None:
        outside = ~region.frame_mask(pattern.frames, shapes.frame_rate)
        overrides.append(ForceFrames(pattern, layout.targets, outside, from_row=layout.source))
    maps = MeanMaps(pattern.steps, layout.rows_cond, shapes.max_text_tokens)
    request = Request(shapes, prompts, options, edits=batch, overrides=overrides, recorders=[maps])

    def finish(r: Request) -> EditResult:
        codes = r.codes()
        return EditResult(codes[layout.source], codes[list(layout.targets)], plans, maps.maps, options)

    return Job(request, finish, {name: name for name in layout.names})


def edit_from_capture_job(backend: Backend, capture: SourceCapture, specs: Sequence[EditSpec], *,
                          region: Region | None = None) -> Job:
    """Captured mode: the source's maps and codes come from `capture`; the source is not
    run, except with self-attention injection (`reruns_source`). Outputs: source (the
    captured codes), target_1..target_n."""
    shapes = backend.shapes
    capture.check_compatible(backend, specs)
    plans = compile_specs(backend, specs)
    options = capture.options
    if reruns_source(specs):
        job = _paired_job(backend, plans, options, region, capture.codes)
        job.outputs[SOURCE] = capture.codes
        return job
    pattern = _pattern(shapes, options)
    batch = EditBatch(plans, cfg=options.cfg, num_heads=shapes.num_heads, captured_maps=capture.maps)
    layout = batch.layout
    overrides = []
    if region is not None:
        outside = ~region.frame_mask(pattern.frames, shapes.frame_rate)
        overrides.append(ForceFrames(pattern, layout.targets, outside, source_codes=capture.codes))
    maps = MeanMaps(pattern.steps, layout.rows_cond, shapes.max_text_tokens)
    request = Request(shapes, [p.target for p in plans], options, edits=batch, overrides=overrides,
                      recorders=[maps])

    def finish(r: Request) -> EditResult:
        source_mean = capture.maps.astype(np.float32).mean(axis=(1, 2))[:, None]  # [steps, 1, T]
        return EditResult(capture.codes, r.codes()[list(layout.targets)], plans,
                          np.concatenate([source_mean, maps.maps], axis=1), options)

    return Job(request, finish, {SOURCE: capture.codes, **{name: name for name in layout.names}})


def capture_job(backend: Backend, source: str, options: GenerationOptions, *,
                audio_codes: np.ndarray | None = None, dtype=np.float16) -> Job:
    """Generates (or, with `audio_codes`, teacher-forces) the source and records its
    conditional cross-attention maps [steps, layers, heads, T] in `dtype`. Output: source."""
    shapes = backend.shapes
    prompt = backend.tokenizer.encode(source)
    if audio_codes is not None:
        options = options_for_audio(options, audio_codes, shapes.frame_rate)
    pattern = _pattern(shapes, options)
    edits = EditBatch.plain(1, cfg=options.cfg, shapes=shapes, names=(SOURCE,))
    layout = edits.layout
    overrides = [] if audio_codes is None else [_teacher_force(pattern, layout, SOURCE, audio_codes)]
    maps = RowMaps(pattern.steps, layout.index(SOURCE), shapes.num_layers, shapes.num_heads,
                   shapes.max_text_tokens, dtype=dtype)
    request = Request(shapes, [prompt], options, edits=edits, overrides=overrides, recorders=[maps])

    def finish(r: Request) -> SourceCapture:
        return SourceCapture(prompt=source, codes=r.codes()[layout.index(SOURCE)], maps=maps.maps, options=options,
                             shapes=shapes)

    return Job(request, finish, {SOURCE: SOURCE})


# -- run one to the end -------------------------------------------------------------------

def generate(backend: Backend, prompt: str, options: GenerationOptions, *, progress: bool = True) -> Generated:
    return run_job(backend, generate_job(backend, prompt, options), progress)


def edit(backend: Backend, specs: Sequence[EditSpec], options: GenerationOptions, *,
         region: Region | None = None, audio_codes: np.ndarray | None = None,
         progress: bool = True) -> EditResult:
    return run_job(backend, edit_job(backend, specs, options, region=region, audio_codes=audio_codes), progress)


def edit_from_capture(backend: Backend, capture: SourceCapture, specs: Sequence[EditSpec], *,
                      region: Region | None = None, progress: bool = True) -> EditResult:
    return run_job(backend, edit_from_capture_job(backend, capture, specs, region=region), progress)


def capture_source(backend: Backend, source: str, options: GenerationOptions, *,
                   audio_codes: np.ndarray | None = None, dtype=np.float16,
                   progress: bool = True) -> SourceCapture:
    return run_job(backend, capture_job(backend, source, options, audio_codes=audio_codes, dtype=dtype), progress)


def _pattern(shapes, options: GenerationOptions) -> DelayPattern:
    """The delay pattern a Request will use for `options` (overrides need it up front);
    validates the duration."""
    steps = shapes.steps_for_frames(options.frames(shapes))
    return DelayPattern.for_shapes(shapes, steps + 1)


def _teacher_force(pattern: DelayPattern, layout: RowLayout, row: str, codes: np.ndarray) -> ForceFrames:
    """Row `row` follows `codes` [K, frames] at every frame."""
    return ForceFrames(pattern, [layout.index(row)], np.ones(pattern.frames, bool), source_codes=codes)
