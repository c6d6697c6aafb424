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
from editgen.cli.outputs import atomic_file, check_writable_file
from editgen.errors import InvalidRequestError


def register(sub) -> None:
    p = add_parser(sub, "generate", help="generate music from a text prompt (writes a WAV file)")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help='text description, e.g. "lofi piano"')
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output file; must end in .wav (the only format written)")
    p.set_defaults(func=run)


def run(args) -> int:
    from editgen.engine.audio import write_wav
    from editgen.engine.jobs import generate

    out = check_writable_file(args.output)
    if out.suffix.lower() != ".wav":
        raise InvalidRequestError(f"output {out} must end in .wav: editgen writes WAV only "
                                  "(convert it afterwards, e.g. ffmpeg -i out.wav out.mp3)")
    options = generation_options(args)  # validated before the model loads
    with open_from_args(args) as backend:
        note_request(backend, options, {"prompt": args.prompt})
        result = generate(backend, args.prompt, options, progress=not args.no_progress)
    with atomic_file(out) as tmp:
        write_wav(tmp, result.wav, result.sample_rate)
    channels = "stereo, " if result.wav.shape[0] == 2 else ""
    print(f"wrote {out} ({channels}{result.wav.shape[-1] / result.sample_rate:.2f} s, {result.codes.shape[1]} frames)")
    return 0
