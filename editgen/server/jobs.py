"""Request bodies -> Tickets, with the engine's validation (the router's half of the
work, run by the HTTP handlers): options, edit specs, regions, uploaded audio and
capture ids are checked here, so a bad request is refused before it is queued."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine import codec_chunks
from editgen.engine.audio import check_source_codes
from editgen.engine.audio_blocks import DecodedAudio, read_upload
from editgen.engine.codec_chunks import CodecChunks
from editgen.engine.capture import MAP_DTYPES, SourceCapture
from editgen.engine.edit import EditSpec
from editgen.engine.jobs import (EditResult, Job, Region, capture_job, edit_from_capture_job, edit_job, edit_source,
                                 generate_job)
from editgen.engine.notes import region_note, request_notes, rerun_note
from editgen.engine.options import GenerationOptions
from editgen.engine.request_fields import request_fields
from editgen.engine.tokenizer import check_prompt
from editgen.errors import InvalidRequestError
from editgen.server.captures import CaptureStore, capture_bytes
from editgen.server.config import ServerConfig
from editgen.server.schemas import CaptureBody, EditBody, GenerateBody, Sampling, option_fields, spec_fields
from editgen.server.tickets import Outcome, Ticket, Track

_SAMPLING_FIELDS = tuple(f.name for f in request_fields(GenerationOptions))


@dataclasses.dataclass(frozen=True)
class SourceAudio:
    """An uploaded source, encoded: codes [K, frames] and the notes of its conversion."""

    codes: np.ndarray
    notes: tuple[str, ...]


class JobFactory:
    """Its finish functions give codes and facts; the scheduler decodes the tracks (on the
    codec grid of `config.codec_chunk_seconds`, the grid its streams use too)."""

    def __init__(self, backend, captures: CaptureStore, config: ServerConfig):
        self.backend, self.captures, self.config = backend, captures, config
        self.shapes = backend.shapes
        self.max_seconds = config.max_seconds
        self.chunks = CodecChunks.of_seconds(config.codec_chunk_seconds, self.shapes.frame_rate)

    # -- shared checks ------------------------------------------------------------------

    def options(self, body: Sampling) -> GenerationOptions:
        options = GenerationOptions(**option_fields(body))
        options.frames(self.shapes, self.max_seconds)  # the CLI's messages
        options.window_frames(self.shapes)
        return options

    def _ticket(self, kind, job, finish, *, tracks=(), stream=False, arrived=None, notes=()) -> Ticket:
        return Ticket(kind, job, finish, tracks=tuple(tracks), stream=stream, arrived=arrived,
                      deadline_s=self.config.deadline_s, notes=tuple(n for n in notes if n))

    def _info(self, ticket_notes, frames: int, **extra) -> dict:
        return {"sample_rate": self.shapes.sample_rate, "frames": int(frames),
                "seconds": frames / self.shapes.frame_rate, "notes": [n for n in ticket_notes if n], **extra}

    # -- generate -----------------------------------------------------------------------

    def generate(self, body: GenerateBody, arrived: float) -> Ticket:
        check_prompt(body.prompt, "prompt")
        options = self.options(body)
        job = generate_job(self.backend, body.prompt, options, max_seconds=self.max_seconds)
        notes = request_notes(self.backend, options, {"prompt": body.prompt}, top_k_name="top_k")

        def finish(job: Job) -> Outcome:  # not job.result(): that would decode the audio
            codes = job.request.codes()[0]
            windows = job.request.window_plan.seconds(self.shapes.frame_rate)
            info = self._info(notes, codes.shape[-1], options=dataclasses.asdict(options), windows=windows)
            return Outcome({}, {"audio": codes}, info)

        return self._ticket("generate", job, finish, tracks=[Track("audio", "prompt_1")], stream=body.stream,
                            arrived=arrived, notes=notes)

    # -- edit ---------------------------------------------------------------------------

    def edit(self, body: EditBody, arrived: float, audio: SourceAudio | None = None) -> Ticket:
        """Paired (no capture, no audio), captured (capture_id) or real-audio (`audio`) edit."""
        capture = self.captures.get(body.capture_id) if body.capture_id is not None else None
        options = None
        if capture is None:
            options = self.options(body) if audio is None else self._audio_options(body)
        given = sorted(f for f in _SAMPLING_FIELDS if f in body.model_fields_set)
        source, options, capture_note = edit_source(body.source, capture, options, given)
        spec = EditSpec(source=source, **spec_fields(body))
        region = Region(body.region.start, body.region.end) if body.region is not None else None
        notes = list(audio.notes) if audio is not None else []
        notes += request_notes(self.backend, options, {"source prompt": spec.source, "target prompt": spec.target},
                               top_k_name="top_k")
        notes.append(capture_note)
        rate = self.shapes.frame_rate
        if capture is not None:
            notes.append(region_note(region, capture.codes.shape[-1], rate))
            job = edit_from_capture_job(self.backend, capture, [spec], region=region, max_seconds=self.max_seconds)
            rerun = rerun_note([spec], capture)  # then rows are [source, target], as paired
            if rerun:
                notes.append(rerun)
            tracks = [Track("edited", "target_1"), Track("source", "source")]
            mode = "captured"
        else:
            codes = audio.codes if audio is not None else None
            frames = codes.shape[-1] if codes is not None else options.frames(self.shapes, self.max_seconds)
            notes.append(region_note(region, frames, rate))
            job = edit_job(self.backend, [spec], options, region=region, audio_codes=codes,
                           max_seconds=self.max_seconds)
            tracks = [Track("edited", "target_1"), Track("source", "source")]
            mode = "paired" if audio is None else "audio"

        def finish(job: Job) -> Outcome:
            result: EditResult = job.result()
            edited, source_codes = result.edited_codes[0], result.source_codes
            plan = result.plans[0]
            info = self._info(notes, edited.shape[-1], mode=mode, op=plan.op, source=plan.source.text,
                              target=plan.target.text, options=dataclasses.asdict(result.options),
                              windows=result.windows.seconds(self.shapes.frame_rate))
            return Outcome({}, {"edited": edited, "source": source_codes}, info)

        return self._ticket("edit", job, finish, tracks=tracks, stream=body.stream, arrived=arrived, notes=notes)

    def _audio_options(self, body: Sampling) -> GenerationOptions:
        """Real-audio edits take their duration from the audio: `seconds` is not checked."""
        return GenerationOptions(**option_fields(body, seconds=1.0))

    # -- capture ------------------------------------------------------------------------

    def capture(self, body: CaptureBody, arrived: float, audio: SourceAudio | None = None) -> Ticket:
        check_prompt(body.source, "source prompt")
        options = self.options(body) if audio is None else self._audio_options(body)
        notes = list(audio.notes) if audio is not None else []
        notes += request_notes(self.backend, options, {"source prompt": body.source}, top_k_name="top_k")
        job = capture_job(self.backend, body.source, options, audio_codes=None if audio is None else audio.codes,
                          dtype=MAP_DTYPES[body.capture_dtype], max_seconds=self.max_seconds)

        def finish(job: Job) -> Outcome:
            capture: SourceCapture = job.result()
            capture_id = self.captures.put(capture)
            steps = None if capture.maps is None else int(capture.maps.shape[0])  # long: codes only
            info = self._info(notes, capture.codes.shape[-1], capture_id=capture_id, prompt=capture.prompt,
                              steps=steps, bytes=capture_bytes(capture),
                              capture_dtype=body.capture_dtype, options=dataclasses.asdict(capture.options))
            return Outcome({}, {}, info)

        return self._ticket("capture", job, finish, arrived=arrived, notes=notes)

    # -- uploads ------------------------------------------------------------------------

    def read_upload(self, file, name: str) -> DecodedAudio:
        """An uploaded file object -> the model's channels at its rate, decoded block by
        block within the server's budget (editgen.engine.audio_blocks)."""
        return read_upload(file, name, self.shapes, max_seconds=self.max_seconds,
                           max_samples=self.config.max_upload_samples)

    def encode_upload(self, upload: DecodedAudio) -> SourceAudio:
        """On the codec thread: EnCodec codes of the upload, chunk by chunk."""
        codes = codec_chunks.encode(self.backend, upload.wav, self.chunks)  # [K, frames]
        note = check_source_codes(upload, codes, self.shapes).replace("--seconds", "seconds")
        if codes.shape[-1] < self.shapes.min_frames:
            raise InvalidRequestError(f"audio {upload.path} gives {codes.shape[-1]} frames, the codec needs at least "
                                      f"{self.shapes.min_frames} ({self.shapes.min_frames / self.shapes.frame_rate:.2f} s)")
        return SourceAudio(codes, upload.notes + (note,))
