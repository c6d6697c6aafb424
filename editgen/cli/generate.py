"""editgen generate: text -> WAV."""

from __future__ import annotations

from editgen.cli.common import (
    add_generation_args,
    add_model_args,
    add_parser,
    generation_options,
    note_request,
    open_from_args,
)
from editgen.cli.outputs import atomic_file, check_writable_file, write_decoded
from editgen.errors import InvalidRequestError


def register(sub) -> None:
    p = add_parser(sub, "generate", help="generate music from a text prompt (writes a WAV file)")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help='text description, e.g. "lofi piano"')
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output file; must end in .wav (the only format written)")
    p.set_defaults(func=run)


def run(args) -> int:
    from editgen.cli.progress import step_progress
    from editgen.engine.core import run_alone
    from editgen.engine.jobs import generate_job

    out = check_writable_file(args.output)
    if out.suffix.lower() != ".wav":
        raise InvalidRequestError(f"output {out} must end in .wav: editgen writes WAV only "
                                  "(convert it afterwards, e.g. ffmpeg -i out.wav out.mp3)")
    options = generation_options(args)  # validated before the model loads
    with open_from_args(args) as backend:
        note_request(backend, options, {"prompt": args.prompt})
        job = generate_job(backend, args.prompt, options, max_seconds=args.max_seconds)
        run_alone(backend, job.request, step_progress(args))
        codes = job.request.codes()[0]  # [K, frames]
        with atomic_file(out) as tmp:
            write_decoded(backend, tmp, codes, show_progress=not args.no_progress)
        shapes = backend.shapes
    stereo = "stereo, " if shapes.audio_channels == 2 else ""
    print(f"wrote {out} ({stereo}{codes.shape[-1] / shapes.frame_rate:.2f} s, {codes.shape[-1]} frames)")
    return 0

