"""editgen edit: Prompt-to-Prompt edit of a source prompt (or a captured source, or a WAV)
into a target prompt -> source.wav, edited.wav, edit.json, attention.png in one directory."""

from __future__ import annotations

import dataclasses
import json


from editgen.cli.common import (
    add_generation_args,
    add_model_args,
    add_parser,
    add_request_args,
    generation_options,
    given_fields,
    note,
    note_request,
    open_from_args,
    request_kwargs,
)
from editgen.cli.outputs import atomic_dir, check_writable_dir
from editgen.engine.edit.spec import EditSpec
from editgen.engine.options import GenerationOptions
from editgen.errors import InvalidRequestError

OUTPUT_FILES = ("source.wav", "edited.wav", "edit.json", "attention.png")


def register(sub) -> None:
    p = add_parser(sub, "edit", help="edit music by editing its prompt (Prompt-to-Prompt)",
                   description="Edit a source prompt into a target prompt. Writes source.wav, edited.wav, "
                               "edit.json and attention.png into the output directory.")
    add_model_args(p)
    src = p.add_argument_group("source (one of: --source alone, --capture, --audio with --source)")
    add_request_args(src, EditSpec, only=("source",))
    src.add_argument("--capture", help="source recorded by `editgen capture` (.npz): the source is not run again")
    src.add_argument("--audio", help="edit a real recording: the source row is teacher-forced on this WAV's codes")
    add_request_args(p, EditSpec, skip=("source",))
    p.add_argument("--region", metavar="START:END",
                   help="edit only these seconds, e.g. 2.0:5.0 (outside it the edit copies the source)")
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=run)


def read_source_audio(path: str):
    """The --audio file, read and checked before the model loads: missing, unreadable
    and silent files are AudioErrors (a silent source gives the edit nothing to keep)."""
    from editgen.engine.audio import check_not_silent, read_clip

    clip = read_clip(path)
    check_not_silent(clip, "give a recording with sound in it")
    return clip


def audio_codes(backend, clip):
    """The --audio clip -> EnCodec codes int64 [K, frames] at the model's rate (stereo
    models: both channels' codes, interleaved); checks the length and says what was
    converted."""
    from editgen.engine.audio import check_source_codes, prepare_source

    wav, notes = prepare_source(clip, backend.shapes)  # [channels, samples] float32
    for line in notes:
        note(line)
    codes = backend.encode_audio(wav)  # [K, frames]
    note(check_source_codes(clip, wav, codes, backend.shapes))
    return codes


def note_region(region, frames: int, frame_rate: int) -> None:
    from editgen.engine.notes import region_note

    line = region_note(region, frames, frame_rate)
    if line:
        note(line)


def build_spec(args, source: str) -> EditSpec:
    return EditSpec(source=source, **request_kwargs(EditSpec, args, skip=("source",)))


def run(args) -> int:
    from editgen.engine.capture import SourceCapture
    from editgen.engine.jobs import Region, edit_source

    # Everything cheap is checked before the model loads.
    out = check_writable_dir(args.output)
    if args.capture and args.audio:
        raise InvalidRequestError("give --capture or --audio, not both: capture the audio with "
                                  "`editgen capture --audio` and edit from that capture")
    capture = SourceCapture.load(args.capture) if args.capture else None
    options = None if capture is not None else generation_options(args)
    source, options, capture_note = edit_source(args.source, capture, options, given_fields(GenerationOptions, args),
                                                source_name="--source")
    spec = build_spec(args, source)
    region = Region.parse(args.region) if args.region is not None else None
    clip = read_source_audio(args.audio) if args.audio is not None else None

    with open_from_args(args) as backend:
        note_request(backend, options, {"source prompt": spec.source, "target prompt": spec.target})
        if capture_note:
            note(capture_note)
        result, mode = _run_edit(backend, args, spec, options, capture, region, clip)
        source_wav = backend.decode_audio(result.source_codes[None])[0]  # [channels, samples]
        edited_wav = backend.decode_audio(result.edited_codes)[0]  # [channels, samples]
        shapes = backend.shapes
    written = _write_outputs(out, args, spec, result, mode, source_wav, edited_wav, shapes, region)
    print(f"wrote {out}/{{{','.join(written)}}} ({edited_wav.shape[-1] / shapes.sample_rate:.2f} s, "
          f"{result.edited_codes.shape[-1]} frames)")
    return 0


def _run_edit(backend, args, spec, options, capture, region, clip):
    from editgen.cli.progress import step_progress
    from editgen.engine.jobs import edit, edit_from_capture
    from editgen.engine.notes import rerun_note

    observers = step_progress(args)
    rate = backend.shapes.frame_rate
    if capture is not None:
        note_region(region, capture.codes.shape[-1], rate)
        rerun = rerun_note([spec])
        if rerun:
            note(rerun)
        return edit_from_capture(backend, capture, [spec], region=region, observers=observers), "captured"
    if clip is not None:
        codes = audio_codes(backend, clip)
        note_region(region, codes.shape[-1], rate)
        return edit(backend, [spec], options, region=region, audio_codes=codes, observers=observers), "audio"
    note_region(region, options.frames(backend.shapes), rate)
    return edit(backend, [spec], options, region=region, observers=observers), "paired"


def _write_outputs(out, args, spec, result, mode, source_wav, edited_wav, shapes, region) -> tuple[str, ...]:
    """Writes the output directory; returns the names of the files written."""
    from editgen.engine.audio import write_wav
    from editgen.cli.plots import matplotlib_available, plot_edit_attention

    plan = result.plans[0]
    settings = {
        "mode": mode,
        "model": args.model, "engine": args.engine, "backend": args.backend,
        "op": plan.op, "source": plan.source.text, "target": plan.target.text,
        "word_weights": dict(spec.word_weights),
        "windows": {w: list(b) for w, b in spec.windows.items()},
        "setting": spec.setting, "cross_blend": spec.cross_blend, "self_blend": spec.self_blend,
        "self_window": list(spec.self_window), "reweight_mode": spec.reweight_mode, "mapper": spec.mapper,
        "region": None if region is None else [region.start, region.end],
        "capture": args.capture, "audio": args.audio,
        "options": dataclasses.asdict(result.options),
        "sample_rate": shapes.sample_rate, "frame_rate": shapes.frame_rate, "audio_channels": shapes.audio_channels,
        "frames": int(result.edited_codes.shape[-1]),
        "plan": plan.to_json(),
        "source_codes": result.source_codes.tolist(),  # [K, frames]
        "edited_codes": result.edited_codes[0].tolist(),  # [K, frames]
    }
    with atomic_dir(out) as tmp:
        write_wav(tmp / "source.wav", source_wav, shapes.sample_rate)
        write_wav(tmp / "edited.wav", edited_wav, shapes.sample_rate)
        (tmp / "edit.json").write_text(json.dumps(settings, indent=1) + "\n")
        if not matplotlib_available():
            note("no attention.png: matplotlib is not installed (pip install 'editgen[cli]')")
            return OUTPUT_FILES[:-1]
        plot_edit_attention(tmp / "attention.png", result.mean_maps, result.plans, frame_rate=shapes.frame_rate,
                            audio_seconds=result.edited_codes.shape[-1] / shapes.frame_rate,
                            title=f"Cross-attention per target token ({mode} {plan.op} edit)")
    return OUTPUT_FILES
