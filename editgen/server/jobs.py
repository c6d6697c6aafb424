"""Request bodies -> Tickets, with the engine's validation (the router's half of the
work, run by the HTTP handlers): options, edit specs, regions, uploaded audio and
capture ids are checked here, so a bad request is refused before it is queued."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.audio import check_not_silent, check_source_codes, prepare_source, read_clip_bytes
from editgen.engine.capture import SourceCapture
from editgen.engine.edit import EditSpec
from editgen.engine.jobs import EditResult, Region, capture_job, edit_from_capture_job, edit_job
from editgen.engine.notes import region_note, request_notes, rerun_note
from editgen.engine.options import GenerationOptions
from editgen.engine.jobs import Generated, generate_job
from editgen.engine.tokenizer import check_prompt
from editgen.errors import InvalidRequestError
from editgen.server.captures import CaptureStore, capture_bytes
from editgen.server.config import ServerConfig
from editgen.server.schemas import CaptureBody, EditBody, GenerateBody, Sampling
from editgen.server.tickets import Outcome, Ticket, Track

CAPTURE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
_SAMPLING_FIELDS = ("seconds", "guidance", "top_k", "temperature", "greedy", "seed")


@dataclasses.dataclass(frozen=True)
class SourceAudio:
    """An uploaded source, encoded: codes [K, frames] and the notes of its conversion."""

    codes: np.ndarray
    notes: tuple[str, ...]


class JobFactory:
    def __init__(self, backend, captures: CaptureStore, config: ServerConfig):
        self.backend, self.captures, self.config = backend, captures, config
        self.shapes = backend.shapes
        self.max_seconds = min(config.max_seconds or self.shapes.max_seconds, self.shapes.max_seconds)

    # -- shared checks ------------------------------------------------------------------

    def options(self, body: Sampling) -> GenerationOptions:
        options = GenerationOptions(seconds=body.seconds, guidance_scale=body.guidance, top_k=body.top_k,
                                    temperature=body.temperature, greedy=body.greedy, seed=body.seed)
        options.frames(self.shapes)  # the model's range, with the CLI's message
        self._check_seconds(options.seconds)
        return options

    def _check_seconds(self, seconds: float) -> None:
        if seconds > self.max_seconds:
            raise InvalidRequestError(f"{seconds:g} s is more than this server's limit of {self.max_seconds:g} s: "
                                      "ask for less")

    def _ticket(self, kind, job, finish, *, tracks=(), stream=False, arrived=None, notes=()) -> Ticket:
        return Ticket(kind, job, finish, tracks=tuple(tracks), stream=stream, arrived=arrived,
                      deadline_s=self.config.deadline_s, notes=tuple(n for n in notes if n))

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [K, frames] -> float32 [channels, samples]; one clip per call, as the stream decodes."""
        return self.backend.decode_audio(codes[None])[0]

    def _info(self, ticket_notes, frames: int, **extra) -> dict:
        return {"sample_rate": self.shapes.sample_rate, "frames": int(frames),
                "seconds": frames / self.shapes.frame_rate, "notes": [n for n in ticket_notes if n], **extra}

    # -- generate -----------------------------------------------------------------------

    def generate(self, body: GenerateBody, arrived: float) -> Ticket:
        check_prompt(body.prompt, "prompt")
        options = self.options(body)
        job = generate_job(self.backend, body.prompt, options)
        notes = request_notes(self.backend, options, {"prompt": body.prompt}, top_k_name="top_k")

        def finish(result: Generated) -> Outcome:
            return Outcome({"audio": result.wav}, {"audio": result.codes},
                           self._info(notes, result.codes.shape[-1], options=dataclasses.asdict(options)))

        return self._ticket("generate", job, finish, tracks=[Track("audio", "prompt_1")], stream=body.stream,
                            arrived=arrived, notes=notes)

    # -- edit ---------------------------------------------------------------------------

    def edit(self, body: EditBody, arrived: float, audio: SourceAudio | None = None) -> Ticket:
        """Paired (no capture, no audio), captured (capture_id) or real-audio (`audio`) edit."""
        capture = self.captures.get(body.capture_id) if body.capture_id is not None else None
        if capture is not None:
            source = body.source if body.source is not None else capture.prompt
            options = capture.options
        else:
            if body.source is None:
                raise InvalidRequestError("source is required (the source prompt), unless capture_id is given")
            source = body.source
            options = self.options(body) if audio is None else self._audio_options(body)
        spec = EditSpec(source=source, target=body.target, op=body.op, word_weights=body.word_weights,
                        windows=body.windows, setting=body.setting, cross_blend=body.cross_blend,
                        self_blend=body.self_blend, self_window=body.self_window, reweight_mode=body.reweight_mode)
        region = Region(body.region.start, body.region.end) if body.region is not None else None
        notes = list(audio.notes) if audio is not None else []
        notes += request_notes(self.backend, options, {"source prompt": spec.source, "target prompt": spec.target},
                               top_k_name="top_k")
        rate = self.shapes.frame_rate
        if capture is not None:
            given = sorted(f for f in _SAMPLING_FIELDS if f in body.model_fields_set)
            if given:
                o = capture.options
                notes.append(f"seconds, seed and sampling come from the capture ({o.seconds:g} s, seed {o.seed}, "
                             f"guidance {o.guidance_scale:g}); {', '.join(given)} ignored")
            notes.append(region_note(region, capture.codes.shape[-1], rate))
            job = edit_from_capture_job(self.backend, capture, [spec], region=region)
            rerun = rerun_note([spec])  # then rows are [source, target], as paired
            if rerun:
                notes.append(rerun)
            tracks = [Track("edited", "target_1"), Track("source", "source")]
            mode = "captured"
        else:
            codes = audio.codes if audio is not None else None
            notes.append(region_note(region, codes.shape[-1] if codes is not None else options.frames(self.shapes),
                                     rate))
            job = edit_job(self.backend, [spec], options, region=region, audio_codes=codes)
            tracks = [Track("edited", "target_1"), Track("source", "source")]
            mode = "paired" if audio is None else "audio"

        def finish(result: EditResult) -> Outcome:
            edited, source_codes = result.edited_codes[0], result.source_codes
            plan = result.plans[0]
            info = self._info(notes, edited.shape[-1], mode=mode, op=plan.op, source=plan.source.text,
                              target=plan.target.text, options=dataclasses.asdict(result.options))
            return Outcome({"edited": self._decode(edited), "source": self._decode(source_codes)},
                           {"edited": edited, "source": source_codes}, info)

        return self._ticket("edit", job, finish, tracks=tracks, stream=body.stream, arrived=arrived, notes=notes)

    def _audio_options(self, body: Sampling) -> GenerationOptions:
        """Real-audio edits take their duration from the audio: `seconds` is not checked."""
        return GenerationOptions(seconds=1.0, guidance_scale=body.guidance, top_k=body.top_k,
                                 temperature=body.temperature, greedy=body.greedy, seed=body.seed)

    # -- capture ------------------------------------------------------------------------

    def capture(self, body: CaptureBody, arrived: float, audio: SourceAudio | None = None) -> Ticket:
        check_prompt(body.source, "source prompt")
        options = self.options(body) if audio is None else self._audio_options(body)
        notes = list(audio.notes) if audio is not None else []
        notes += request_notes(self.backend, options, {"source prompt": body.source}, top_k_name="top_k")
        job = capture_job(self.backend, body.source, options, audio_codes=None if audio is None else audio.codes,
                          dtype=CAPTURE_DTYPES[body.capture_dtype])

        def finish(capture: SourceCapture) -> Outcome:
            capture_id = self.captures.put(capture)
            info = self._info(notes, capture.codes.shape[-1], capture_id=capture_id, prompt=capture.prompt,
                              steps=int(capture.maps.shape[0]), bytes=capture_bytes(capture),
                              capture_dtype=body.capture_dtype, options=dataclasses.asdict(capture.options))
            return Outcome({}, {}, info)

        return self._ticket("capture", job, finish, arrived=arrived, notes=notes)

    # -- uploads ------------------------------------------------------------------------

    def read_upload(self, data: bytes, name: str):
        """Uploaded bytes -> (clip, wav at the model's rate, notes); the CLI's checks."""
        clip = read_clip_bytes(data, name, self.max_seconds)
        check_not_silent(clip, "give a recording with sound in it")
        wav, notes = prepare_source(clip, self.shapes)
        return clip, wav, notes

    def encode_upload(self, clip, wav: np.ndarray, notes: list[str]) -> SourceAudio:
        """On the codec thread: EnCodec codes of the upload."""
        codes = self.backend.encode_audio(wav)  # [K, frames]
        note = check_source_codes(clip, wav, codes, self.shapes).replace("--seconds", "seconds")
        if codes.shape[-1] < self.shapes.min_frames:
            raise InvalidRequestError(f"audio {clip.path} gives {codes.shape[-1]} frames, the codec needs at least "
                                      f"{self.shapes.min_frames} ({self.shapes.min_frames / self.shapes.frame_rate:.2f} s)")
        return SourceAudio(codes, tuple(notes) + (note,))
