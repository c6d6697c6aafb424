"""editgen edit: Prompt-to-Prompt edit of a source prompt (or a captured source, or a WAV)
into a target prompt -> source.wav, edited.wav, edit.json, attention.png in one directory."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from editgen.cli.common import (
    add_generation_args,
    add_model_args,
    add_parser,
    generation_options,
    note,
    note_request,
    open_from_args,
)
from editgen.cli.outputs import atomic_dir, check_writable_dir
from editgen.engine.edit.settings import DEFAULT_SETTING, REWEIGHT_MODES, SETTINGS
from editgen.errors import InvalidRequestError

OUTPUT_FILES = ("source.wav", "edited.wav", "edit.json", "attention.png")


def register(sub) -> None:
    p = add_parser(sub, "edit", help="edit music by editing its prompt (Prompt-to-Prompt)",
                   description="Edit a source prompt into a target prompt. Writes source.wav, edited.wav, "
                               "edit.json and attention.png into the output directory.")
    add_model_args(p)
    src = p.add_argument_group("source (one of: --source alone, --capture, --audio with --source)")
    src.add_argument("--source", help="source prompt (with --capture: defaults to the captured prompt; "
                                      "with --audio: a description of the audio)")
    src.add_argument("--capture", help="source recorded by `editgen capture` (.npz): the source is not run again")
    src.add_argument("--audio", help="edit a real recording: the source row is teacher-forced on this WAV's codes")
    p.add_argument("--target", help="edited prompt (optional for --op reweight)")
    p.add_argument("--op", choices=("replace", "refine", "reweight"), default="replace",
                   help="replace: same word count, words swapped; refine: words added/removed; "
                        "reweight: same prompt, word weights")
    p.add_argument("--word", action="append", default=[], metavar="WORD=C",
                   help="reweight target word WORD by C in [-2, 2] (repeatable)")
    p.add_argument("--window", action="append", default=[], metavar="WORD=F|WORD=S:E",
                   help="inject WORD's cross-attention edit during steps [floor(S (N+1)), floor(E (N+1))) "
                        "of N, as Prompt-to-Prompt (F means 0:F); WORD may be `default` (repeatable)")
    p.add_argument("--setting", default=DEFAULT_SETTING, choices=tuple(SETTINGS),
                   help="editgen-code: hard cross + self-attention b_i = (2i+1)/(2N), what the paper's "
                        "released code evaluates; paper-text: cross a_i = i/N, no self-injection; "
                        "hard: Prompt-to-Prompt")
    p.add_argument("--cross-blend", "--blend", dest="cross_blend", default=None,
                   help="override the setting's cross-attention layer schedule a_i (1 keeps the own map): "
                        "soft, hard, reversed, constant:X or X0,X1,... (one per layer)")
    p.add_argument("--self-blend", default=None,
                   help="override the setting's self-attention schedule b_i (weight of the source): "
                        "off, editgen, full, constant:X or X0,X1,...")
    p.add_argument("--self-window", default=None, metavar="F|S:E",
                   help="self-injection steps [floor(S N), floor(E N)) (default: all)")
    p.add_argument("--reweight-mode", default="p2p", choices=REWEIGHT_MODES,
                   help="p2p: multiply the word's attention by C (Prompt-to-Prompt); editgen-code: "
                        "divide every other column by C (the released EditGen code)")
    p.add_argument("--region", metavar="START:END",
                   help="edit only these seconds, e.g. 2.0:5.0 (outside it the edit copies the source)")
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=run)


def parse_assignments(items: list[str], flag: str, value_name: str) -> dict[str, float]:
    """["guitar=1.5", ...] -> {"guitar": 1.5}; malformed items raise InvalidRequestError."""
    out: dict[str, float] = {}
    for item in items:
        word, sep, raw = item.rpartition("=")
        word = word.strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or not word or not math.isfinite(value):
            raise InvalidRequestError(f"{flag} {item!r} must look like WORD={value_name}, "
                                      f"e.g. {flag} guitar=0.5")
        if word in out:
            raise InvalidRequestError(f"{flag}: word {word!r} is given twice")
        out[word] = value
    return out


def parse_windows(items: list[str], flag: str) -> dict[str, str]:
    """["guitar=0.4", "drums=0.1:0.6"] -> {"guitar": "0.4", ...}; the values are checked by EditSpec."""
    out: dict[str, str] = {}
    for item in items:
        word, sep, raw = item.rpartition("=")
        word = word.strip()
        if not sep or not word or not raw.strip():
            raise InvalidRequestError(f"{flag} {item!r} must look like WORD=F or WORD=START:END, "
                                      f"e.g. {flag} guitar=0.5")
        if word in out:
            raise InvalidRequestError(f"{flag}: word {word!r} is given twice")
        out[word] = raw.strip()
    return out


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


def build_spec(args, source: str):
    from editgen.engine.edit import EditSpec

    return EditSpec(source=source, target=args.target, op=args.op,
                    word_weights=parse_assignments(args.word, "--word", "C"),
                    windows=parse_windows(args.window, "--window"), setting=args.setting,
                    cross_blend=args.cross_blend, self_blend=args.self_blend, self_window=args.self_window,
                    reweight_mode=args.reweight_mode)


def run(args) -> int:
    from editgen.engine.capture import SourceCapture
    from editgen.engine.jobs import Region

    # Everything cheap is checked before the model loads.
    out = check_writable_dir(args.output)
    if args.capture and args.audio:
        raise InvalidRequestError("give --capture or --audio, not both: capture the audio with "
                                  "`editgen capture --audio` and edit from that capture")
    capture = SourceCapture.load(args.capture) if args.capture else None
    if capture is not None:
        source = args.source if args.source is not None else capture.prompt
        options = capture.options
    else:
        if args.source is None:
            raise InvalidRequestError("--source is required (the source prompt), unless --capture is given")
        source = args.source
        options = generation_options(args)
    spec = build_spec(args, source)
    region = Region.parse(args.region) if args.region is not None else None
    clip = read_source_audio(args.audio) if args.audio is not None else None

    with open_from_args(args) as backend:
        note_request(backend, options, {"source prompt": spec.source, "target prompt": spec.target})
        result, mode = _run_edit(backend, args, spec, options, capture, region, clip)
        source_wav = backend.decode_audio(result.source_codes[None])[0]  # [channels, samples]
        edited_wav = backend.decode_audio(result.edited_codes)[0]  # [channels, samples]
        shapes = backend.shapes
    written = _write_outputs(out, args, spec, result, mode, source_wav, edited_wav, shapes, region)
    print(f"wrote {out}/{{{','.join(written)}}} ({edited_wav.shape[-1] / shapes.sample_rate:.2f} s, "
          f"{result.edited_codes.shape[-1]} frames)")
    return 0


def _run_edit(backend, args, spec, options, capture, region, clip):
    from editgen.engine.jobs import edit, edit_from_capture
    from editgen.engine.notes import rerun_note

    progress = not args.no_progress
    rate = backend.shapes.frame_rate
    if capture is not None:
        o = capture.options
        note(f"seconds, seed and sampling come from the capture ({o.seconds:g} s, seed {o.seed}, "
             f"guidance {o.guidance_scale:g}); --seconds/--seed/--guidance/... are ignored")
        note_region(region, capture.codes.shape[-1], rate)
        rerun = rerun_note([spec])
        if rerun:
            note(rerun)
        return edit_from_capture(backend, capture, [spec], region=region, progress=progress), "captured"
    if clip is not None:
        codes = audio_codes(backend, clip)
        note_region(region, codes.shape[-1], rate)
        return edit(backend, [spec], options, region=region, audio_codes=codes, progress=progress), "audio"
    note_region(region, options.frames(backend.shapes), rate)
    return edit(backend, [spec], options, region=region, progress=progress), "paired"


def _write_outputs(out, args, spec, result, mode, source_wav, edited_wav, shapes, region) -> tuple[str, ...]:
    """Writes the output directory; returns the names of the files written."""
    from editgen.engine.audio import write_wav
    from editgen.engine.plots import matplotlib_available, plot_edit_attention

    plan = result.plans[0]
    settings = {
        "mode": mode,
        "model": args.model, "engine": args.engine, "backend": args.backend,
        "op": plan.op, "source": plan.source.text, "target": plan.target.text,
        "word_weights": dict(spec.word_weights),
        "windows": {w: list(b) for w, b in spec.windows.items()},
        "setting": spec.setting, "cross_blend": spec.cross_blend, "self_blend": spec.self_blend,
        "self_window": list(spec.self_window), "reweight_mode": spec.reweight_mode,
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
