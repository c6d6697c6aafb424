"""Every job the engine runs, built in one place: plain generation, paired edits (source
and targets in one batch), edits from a capture (targets from source maps recorded
earlier), captures, real-audio edits (the source row teacher-forced on EnCodec codes of a
recording) and time-region edits. Every one runs as windows when it is longer than one
(editgen.engine.windows): the jobs give the Request its WindowPlan (built with the
configured maximum length, `max_seconds`), and their hooks and recorders work on the
song's frames and steps.

A Job is a Request (its rows named by a RowLayout) plus how to turn its codes into a
result, and its outputs by name: each is a row of the request or codes known in advance
(a captured source). Streaming and the server read outputs by name, never by row index."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from editgen.engine import codec_chunks
from editgen.engine.capture import SourceCapture
from editgen.engine.contract import Backend
from editgen.engine.core import StepObserver, run_alone
from editgen.engine.edit import EditBatch, EditPlan, EditSpec, compile_edit
from editgen.engine.hooks import ForceFrames, MeanMaps, RowMaps
from editgen.engine.options import GenerationOptions
from editgen.engine.requests import Request
from editgen.engine.rows import SOURCE, RowLayout
from editgen.engine.windows import DEFAULT_MAX_SECONDS, WindowPlan
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
        """bool [frames], True inside the region (song frames: the whole song's time)."""
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
    mean_maps: np.ndarray  # [song steps, 1 + targets, T] cross-attention over layers and heads; row 0 source
    options: GenerationOptions
    windows: WindowPlan


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

    def codes_so_far(self, output: str, frames: int, start: int = 0) -> np.ndarray:
        """Codes [K, frames - start] of frames [start, frames) of `output` (a copy), frames <=
        settled_frames()."""
        source = self.outputs[output]
        if isinstance(source, str):
            return self.request.codes_so_far(source, frames, start)
        return source[:, start:frames].copy()


def run_job(backend: Backend, job: Job, observers: Sequence[StepObserver] = ()):
    run_alone(backend, job.request, observers)
    return job.result()


def _plan(backend: Backend, options: GenerationOptions, max_seconds: float) -> WindowPlan:
    """The request's windows; validates the duration (up to `max_seconds`) and W, C."""
    return WindowPlan.for_options(backend.shapes, options, max_seconds)


def compile_specs(backend: Backend, specs: Sequence[EditSpec]) -> tuple[EditPlan, ...]:
    if not specs:
        raise InvalidRequestError("an edit needs at least one target")
    return tuple(compile_edit(s, backend.tokenizer, backend.shapes.num_layers) for s in specs)


def options_for_audio(options: GenerationOptions, codes: np.ndarray, frame_rate: int) -> GenerationOptions:
    """Real-audio edits last as long as the audio."""
    return dataclasses.replace(options, seconds=codes.shape[-1] / frame_rate)


def long_capture(capture: SourceCapture) -> bool:
    """A capture of a source longer than one window keeps codes and options only: its maps
    would be too large (random:small: 49 KB per step in fp16, 1.5 GB for 10 minutes),
    so an edit from it runs the source again, teacher-forced on its codes."""
    return capture.maps is None


def edit_source(source: str | None, capture: SourceCapture | None, options: GenerationOptions | None,
                given: Sequence[str] = (), *, source_name: str = "source") -> tuple[str, GenerationOptions, str | None]:
    """An edit's source prompt and options, the one rule for every surface: from a capture,
    the captured prompt unless `source` names one, and the capture's duration, seed and
    sampling (`given`: the generation options the user set, which are then ignored; the
    note says so); otherwise `source` is required and `options` are the request's.
    Returns (source, options, note or None)."""
    if capture is not None:
        o = capture.options
        note = (f"seconds, seed and sampling come from the capture ({o.seconds:g} s, seed {o.seed}, "
                f"guidance {o.guidance_scale:g})" + (f"; {', '.join(given)} ignored" if given else ""))
        return (capture.prompt if source is None else source), o, note
    if source is None:
        raise InvalidRequestError(f"{source_name} is required (the source prompt), unless a capture is given")
    return source, options, None


def reruns_source(specs: Sequence[EditSpec], capture: SourceCapture | None = None) -> bool:
    """Whether an edit from a capture re-runs the source, teacher-forced on the captured
    codes: self-attention injection needs the source's self-attention maps, which a
    capture does not hold (they grow as steps^2), and a long capture holds no maps."""
    return any(s.injects_self for s in specs) or (capture is not None and long_capture(capture))


# -- the jobs ---------------------------------------------------------------------------

def generate_job(backend: Backend, prompt: str, options: GenerationOptions, *,
                 max_seconds: float = DEFAULT_MAX_SECONDS) -> Job:
    """Codes of one prompt; the result is Generated (decoded audio, chunk by chunk when
    long). Output: prompt_1."""
    request = Request(backend.shapes, [backend.tokenizer.encode(prompt)], options,
                      windows=_plan(backend, options, max_seconds))
    row = request.layout.names[0]

    def finish(r: Request) -> Generated:
        codes = r.codes()[0]
        return Generated(codec_chunks.decode(backend, codes), codes, backend.shapes.sample_rate)

    return Job(request, finish, {row: row})


def edit_job(backend: Backend, specs: Sequence[EditSpec], options: GenerationOptions, *,
             region: Region | None = None, audio_codes: np.ndarray | None = None,
             max_seconds: float = DEFAULT_MAX_SECONDS) -> Job:
    """Paired mode: rows [source, target_1..n]; `audio_codes` [K, frames] teacher-forces the
    source. Outputs: source, target_1..target_n."""
    plans = compile_specs(backend, specs)
    if audio_codes is not None:
        options = options_for_audio(options, audio_codes, backend.shapes.frame_rate)
    return _paired_job(backend, plans, options, region, audio_codes, _plan(backend, options, max_seconds))


def _paired_job(backend: Backend, plans: tuple[EditPlan, ...], options: GenerationOptions,
                region: Region | None, source_codes: np.ndarray | None, windows: WindowPlan) -> Job:
    """Rows [source, target_1..n]; `source_codes` [K, frames] teacher-forces the source."""
    shapes = backend.shapes
    batch = EditBatch(plans, cfg=options.cfg, num_heads=shapes.num_heads)
    layout = batch.layout
    prompts = [plans[0].source] + [p.target for p in plans]
    overrides = [] if source_codes is None else [_teacher_force(windows, layout, SOURCE, source_codes)]
    if region is not None:
        outside = ~region.frame_mask(windows.frames, shapes.frame_rate)
        overrides.append(ForceFrames(layout.targets, outside, from_row=layout.source))
    maps = MeanMaps(windows.song_steps, layout.rows_cond, shapes.max_text_tokens)
    request = Request(shapes, prompts, options, edits=batch, overrides=overrides, recorders=[maps], windows=windows)

    def finish(r: Request) -> EditResult:
        codes = r.codes()
        return EditResult(codes[layout.source], codes[list(layout.targets)], plans, maps.maps, options, windows)

    return Job(request, finish, {name: name for name in layout.names})


def edit_from_capture_job(backend: Backend, capture: SourceCapture, specs: Sequence[EditSpec], *,
                          region: Region | None = None, max_seconds: float = DEFAULT_MAX_SECONDS) -> Job:
    """Captured mode: the source's maps and codes come from `capture`; the source is not
    run, except with self-attention injection or a long capture (`reruns_source`).
    Outputs: source (the captured codes), target_1..target_n."""
    shapes = backend.shapes
    capture.check_compatible(backend, specs)
    plans = compile_specs(backend, specs)
    options = capture.options
    windows = _plan(backend, options, max_seconds)
    if reruns_source(specs, capture):
        job = _paired_job(backend, plans, options, region, capture.codes, windows)
        job.outputs[SOURCE] = capture.codes
        return job
    batch = EditBatch(plans, cfg=options.cfg, num_heads=shapes.num_heads, captured_maps=capture.maps)
    layout = batch.layout
    overrides = []
    if region is not None:
        outside = ~region.frame_mask(windows.frames, shapes.frame_rate)
        overrides.append(ForceFrames(layout.targets, outside, source_codes=capture.codes))
    maps = MeanMaps(windows.song_steps, layout.rows_cond, shapes.max_text_tokens)
    request = Request(shapes, [p.target for p in plans], options, edits=batch, overrides=overrides,
                      recorders=[maps], windows=windows)

    def finish(r: Request) -> EditResult:
        source_mean = capture.maps.astype(np.float32).mean(axis=(1, 2))[:, None]  # [steps, 1, T]
        return EditResult(capture.codes, r.codes()[list(layout.targets)], plans,
                          np.concatenate([source_mean, maps.maps], axis=1), options, windows)

    return Job(request, finish, {SOURCE: capture.codes, **{name: name for name in layout.names}})


def capture_job(backend: Backend, source: str, options: GenerationOptions, *,
                audio_codes: np.ndarray | None = None, dtype=np.float16,
                max_seconds: float = DEFAULT_MAX_SECONDS) -> Job:
    """Generates (or, with `audio_codes`, teacher-forces) the source and records its
    conditional cross-attention maps [steps, layers, heads, T] in `dtype`; a source longer
    than one window keeps its codes and options only (`long_capture`). Output: source."""
    shapes = backend.shapes
    prompt = backend.tokenizer.encode(source)
    if audio_codes is not None:
        options = options_for_audio(options, audio_codes, shapes.frame_rate)
    windows = _plan(backend, options, max_seconds)
    edits = EditBatch.plain(1, cfg=options.cfg, shapes=shapes, names=(SOURCE,))
    layout = edits.layout
    overrides = [] if audio_codes is None else [_teacher_force(windows, layout, SOURCE, audio_codes)]
    recorders = []
    if len(windows.windows) == 1:
        recorders.append(RowMaps(windows.song_steps, layout.index(SOURCE), shapes.num_layers, shapes.num_heads,
                                 shapes.max_text_tokens, dtype=dtype))
    request = Request(shapes, [prompt], options, edits=edits, overrides=overrides, recorders=recorders,
                      windows=windows)

    def finish(r: Request) -> SourceCapture:
        return SourceCapture(prompt=source, codes=r.codes()[layout.index(SOURCE)],
                             maps=recorders[0].maps if recorders else None, options=options, shapes=shapes)

    return Job(request, finish, {SOURCE: SOURCE})


# -- run one to the end -------------------------------------------------------------------
# `max_seconds`: the longest song accepted (a setting: the CLI's and server's --max-seconds).

def generate(backend: Backend, prompt: str, options: GenerationOptions, *, max_seconds: float = DEFAULT_MAX_SECONDS,
             observers: Sequence[StepObserver] = ()) -> Generated:
    return run_job(backend, generate_job(backend, prompt, options, max_seconds=max_seconds), observers)


def edit(backend: Backend, specs: Sequence[EditSpec], options: GenerationOptions, *,
         region: Region | None = None, audio_codes: np.ndarray | None = None,
         max_seconds: float = DEFAULT_MAX_SECONDS, observers: Sequence[StepObserver] = ()) -> EditResult:
    job = edit_job(backend, specs, options, region=region, audio_codes=audio_codes, max_seconds=max_seconds)
    return run_job(backend, job, observers)


def edit_from_capture(backend: Backend, capture: SourceCapture, specs: Sequence[EditSpec], *,
                      region: Region | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                      observers: Sequence[StepObserver] = ()) -> EditResult:
    job = edit_from_capture_job(backend, capture, specs, region=region, max_seconds=max_seconds)
    return run_job(backend, job, observers)


def capture_source(backend: Backend, source: str, options: GenerationOptions, *,
                   audio_codes: np.ndarray | None = None, dtype=np.float16, max_seconds: float = DEFAULT_MAX_SECONDS,
                   observers: Sequence[StepObserver] = ()) -> SourceCapture:
    job = capture_job(backend, source, options, audio_codes=audio_codes, dtype=dtype, max_seconds=max_seconds)
    return run_job(backend, job, observers)


def _teacher_force(windows: WindowPlan, layout: RowLayout, row: str, codes: np.ndarray) -> ForceFrames:
    """Row `row` follows `codes` [K, frames] at every frame of the song."""
    assert codes.shape[-1] == windows.frames, (codes.shape, windows.frames)
    return ForceFrames([layout.index(row)], np.ones(windows.frames, bool), source_codes=codes)
