"""editgen edit: Prompt-to-Prompt edit of a source prompt (or a captured source, or a WAV)
into a target prompt -> source.wav, edited.wav, edit.json, attention.png in one directory."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

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
from editgen.cli.outputs import atomic_dir, check_writable_dir, write_decoded
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
                   help="edit only these seconds of the whole song, e.g. 2.0:5.0 (outside it the edit copies the "
                        "source); like --window and --self-window, on the song's time, not a window's")
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=run)


def read_source_audio(args):
    """The --audio file, read and checked before the model loads: missing, unreadable,
    silent and too long (--max-seconds) files are AudioErrors (a silent source gives the
    edit nothing to keep)."""
    from editgen.engine.audio import check_not_silent, read_clip

    clip = read_clip(args.audio, args.max_seconds)
    check_not_silent(clip, "give a recording with sound in it")
    return clip


def audio_codes(backend, clip, *, show_progress: bool = False):
    """The --audio clip -> EnCodec codes int64 [K, frames] at the model's rate (stereo
    models: both channels' codes, interleaved), encoded chunk by chunk; says what was
    converted."""
    from editgen.cli.progress import progress
    from editgen.engine.audio import check_source_codes, prepare_source
    from editgen.engine.codec_chunks import CodecChunks, encode_chunks

    wav, notes = prepare_source(clip, backend.shapes)  # [channels, samples] float32
    for line in notes:
        note(line)
    chunks = CodecChunks()
    hop = backend.shapes.sample_rate // backend.shapes.frame_rate
    count = len(chunks.spans(-(-wav.shape[-1] // hop)))
    parts = progress(encode_chunks(backend, wav, chunks), enabled=count > 1 and show_progress,
                     desc="encoding audio", unit="chunk", total=count)
    codes = np.concatenate(list(parts), axis=-1)  # [K, frames]
    note(check_source_codes(clip, codes, backend.shapes))
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
    options = None if capture is not None else generation_options(args, length_from_audio=args.audio is not None)
    source, options, capture_note = edit_source(args.source, capture, options, given_fields(GenerationOptions, args),
                                                source_name="--source")
    spec = build_spec(args, source)
    region = Region.parse(args.region) if args.region is not None else None
    if capture is not None:
        capture.options.check_length(args.max_seconds)
    clip = read_source_audio(args) if args.audio is not None else None

    with open_from_args(args) as backend:
        note_request(backend, options, {"source prompt": spec.source, "target prompt": spec.target})
        if capture_note:
            note(capture_note)
        result, mode = _run_edit(backend, args, spec, options, capture, region, clip)
        written = _write_outputs(out, backend, args, spec, result, mode, region)
        shapes = backend.shapes
    frames = result.edited_codes.shape[-1]
    print(f"wrote {out}/{{{','.join(written)}}} ({frames / shapes.frame_rate:.2f} s, {frames} frames"
          + (f", {len(result.windows.windows)} windows)" if len(result.windows.windows) > 1 else ")"))
    return 0


def _run_edit(backend, args, spec, options, capture, region, clip):
    from editgen.cli.progress import step_progress
    from editgen.engine.jobs import edit, edit_from_capture
    from editgen.engine.notes import rerun_note

    observers = step_progress(args)
    rate, limit = backend.shapes.frame_rate, args.max_seconds
    if capture is not None:
        note_region(region, capture.codes.shape[-1], rate)
        rerun = rerun_note([spec], capture)
        if rerun:
            note(rerun)
        result = edit_from_capture(backend, capture, [spec], region=region, max_seconds=limit, observers=observers)
        return result, "captured"
    if clip is not None:
        codes = audio_codes(backend, clip, show_progress=not args.no_progress)
        note_region(region, codes.shape[-1], rate)
        result = edit(backend, [spec], options, region=region, audio_codes=codes, max_seconds=limit,
                      observers=observers)
        return result, "audio"
    note_region(region, options.frames(backend.shapes, limit), rate)
    return edit(backend, [spec], options, region=region, max_seconds=limit, observers=observers), "paired"


def _write_outputs(out, backend, args, spec, result, mode, region) -> tuple[str, ...]:
    """Writes the output directory (audio decoded chunk by chunk); returns the names of the
    files written."""
    from editgen.cli.plots import matplotlib_available, plot_edit_attention

    shapes = backend.shapes
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
        "long_form_windows": result.windows.seconds(shapes.frame_rate),  # [start, context end, end] s
        "sample_rate": shapes.sample_rate, "frame_rate": shapes.frame_rate, "audio_channels": shapes.audio_channels,
        "frames": int(result.edited_codes.shape[-1]),
        "plan": plan.to_json(),
        "source_codes": result.source_codes.tolist(),  # [K, frames]
        "edited_codes": result.edited_codes[0].tolist(),  # [K, frames]
    }
    with atomic_dir(out) as tmp:
        bar = not args.no_progress
        write_decoded(backend, tmp / "source.wav", result.source_codes, show_progress=bar, what="source")
        write_decoded(backend, tmp / "edited.wav", result.edited_codes[0], show_progress=bar, what="edited")
        (tmp / "edit.json").write_text(json.dumps(settings, indent=1) + "\n")
        if not matplotlib_available():
            note("no attention.png: matplotlib is not installed (pip install 'editgen[cli]')")
            return OUTPUT_FILES[:-1]
        plot_edit_attention(tmp / "attention.png", result.mean_maps, result.plans, frame_rate=shapes.frame_rate,
                            audio_seconds=result.edited_codes.shape[-1] / shapes.frame_rate,
                            title=f"Cross-attention per target token ({mode} {plan.op} edit)")
    return OUTPUT_FILES
