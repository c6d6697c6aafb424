"""editgen edit: Prompt-to-Prompt edit of a source prompt (or a captured source, or a WAV)
into a target prompt -> source.wav, edited.wav, edit.json, attention.png in one directory."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from editgen.cli.common import add_generation_args, add_model_args, generation_options, open_from_args
from editgen.cli.outputs import atomic_dir, check_writable_dir
from editgen.errors import AudioError, InvalidRequestError, first_line

OUTPUT_FILES = ("source.wav", "edited.wav", "edit.json", "attention.png")


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit music by editing its prompt (Prompt-to-Prompt)",
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
                        "reweight: same prompt, word weights (default replace)")
    p.add_argument("--word", action="append", default=[], metavar="WORD=C",
                   help="reweight target word WORD by C in [-2, 2] (repeatable)")
    p.add_argument("--window", action="append", default=[], metavar="WORD=F",
                   help="inject the edit during the first fraction F in [0, 1] of the steps; "
                        "WORD may be `default` (repeatable)")
    p.add_argument("--blend", default="soft", help="layer blend: soft, hard, reversed or constant:X (default soft)")
    p.add_argument("--region", metavar="START:END", help="edit only these seconds, e.g. 2.0:5.0")
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


def check_audio_readable(path: str) -> None:
    """Cheap header check so an unreadable file fails before the model loads."""
    import soundfile as sf

    try:
        sf.info(str(path))
    except Exception as exc:  # LibsndfileError / RuntimeError / OSError, depending on version
        raise AudioError(f"cannot read audio {path}: {first_line(exc)}") from None


def audio_codes(backend, path: str):
    """WAV -> EnCodec codes int64 [K, frames] at the model's rate; checks the length."""
    from editgen.engine.audio import read_wav

    shapes = backend.shapes
    wav = read_wav(path, shapes.sample_rate)  # [samples] mono float32
    too_long = AudioError(f"audio {path} is {len(wav) / shapes.sample_rate:.2f} s, the model takes at most "
                          f"{shapes.max_seconds:.2f} s: trim it")
    if math.ceil(len(wav) * shapes.frame_rate / shapes.sample_rate) > shapes.max_frames:
        raise too_long  # before encoding: EnCodec on a long file is slow
    codes = backend.encode_audio(wav)  # [K, frames]
    frames = codes.shape[-1]
    if frames < 1:
        raise AudioError(f"audio {path} is too short: it gives no frame at {shapes.frame_rate} frames/s")
    if frames > shapes.max_frames:
        raise too_long
    print(f"note: the duration comes from the audio ({frames / shapes.frame_rate:.2f} s, {frames} frames); "
          "--seconds is ignored", file=sys.stderr)
    return codes


def build_spec(args, source: str):
    from editgen.engine.edit import EditSpec

    return EditSpec(source=source, target=args.target, op=args.op,
                    word_weights=parse_assignments(args.word, "--word", "C"),
                    windows=parse_assignments(args.window, "--window", "F"), blend=args.blend)


def run(args) -> int:
    from editgen.engine.capture import SourceCapture
    from editgen.engine.editing import Region

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
    if args.audio is not None:
        check_audio_readable(args.audio)

    with open_from_args(args) as backend:
        result, mode = _run_edit(backend, args, spec, options, capture, region)
        source_wav = backend.decode_audio(result.source_codes[None])[0]  # [samples]
        edited_wav = backend.decode_audio(result.edited_codes)[0]  # [samples]
        shapes = backend.shapes
    _write_outputs(out, args, spec, result, mode, source_wav, edited_wav, shapes, region)
    print(f"wrote {out}/{{{','.join(OUTPUT_FILES)}}} ({len(edited_wav) / shapes.sample_rate:.2f} s, "
          f"{result.edited_codes.shape[-1]} frames)")
    return 0


def _run_edit(backend, args, spec, options, capture, region):
    from editgen.engine.editing import edit, edit_from_capture

    progress = not args.no_progress
    if capture is not None:
        o = capture.options
        print(f"note: seconds, seed and sampling come from the capture ({o.seconds:g} s, seed {o.seed}, "
              f"guidance {o.guidance_scale:g}); --seconds/--seed/--guidance/... are ignored", file=sys.stderr)
        return edit_from_capture(backend, capture, [spec], region=region, progress=progress), "captured"
    if args.audio is not None:
        codes = audio_codes(backend, args.audio)
        return edit(backend, [spec], options, region=region, audio_codes=codes, progress=progress), "audio"
    return edit(backend, [spec], options, region=region, progress=progress), "paired"


def _write_outputs(out, args, spec, result, mode, source_wav, edited_wav, shapes, region) -> None:
    from editgen.engine.audio import write_wav
    from editgen.engine.plots import plot_edit_attention

    plan = result.plans[0]
    settings = {
        "mode": mode,
        "model": args.model, "engine": args.engine, "backend": args.backend,
        "op": plan.op, "source": plan.source.text, "target": plan.target.text,
        "word_weights": dict(spec.word_weights),
        "windows": dict(spec.windows),
        "blend": spec.blend,
        "region": None if region is None else [region.start, region.end],
        "capture": args.capture, "audio": args.audio,
        "options": dataclasses.asdict(result.options),
        "sample_rate": shapes.sample_rate, "frame_rate": shapes.frame_rate,
        "frames": int(result.edited_codes.shape[-1]),
        "plan": plan.to_json(),
        "source_codes": result.source_codes.tolist(),  # [K, frames]
        "edited_codes": result.edited_codes[0].tolist(),  # [K, frames]
    }
    with atomic_dir(out) as tmp:
        write_wav(tmp / "source.wav", source_wav, shapes.sample_rate)
        write_wav(tmp / "edited.wav", edited_wav, shapes.sample_rate)
        (tmp / "edit.json").write_text(json.dumps(settings, indent=1) + "\n")
        plot_edit_attention(tmp / "attention.png", result.mean_maps, result.plans, frame_rate=shapes.frame_rate,
                            audio_seconds=result.edited_codes.shape[-1] / shapes.frame_rate,
                            title=f"Cross-attention per target token ({mode} {plan.op} edit)")
