"""editgen generate: text -> WAV."""

from __future__ import annotations

from editgen.cli.common import add_generation_args, add_model_args, generation_options, open_from_args
from editgen.cli.outputs import atomic_file, check_writable_file


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate music from a text prompt")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help='text description, e.g. "lofi piano"')
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output .wav")
    p.set_defaults(func=run)


def run(args) -> int:
    from editgen.engine.audio import write_wav
    from editgen.engine.runtime import generate

    out = check_writable_file(args.output)
    options = generation_options(args)  # validated before the model loads
    with open_from_args(args) as backend:
        result = generate(backend, args.prompt, options, progress=not args.no_progress)
    with atomic_file(out) as tmp:
        write_wav(tmp, result.wav, result.sample_rate)
    print(f"wrote {out} ({len(result.wav) / result.sample_rate:.2f} s, {result.codes.shape[1]} frames)")
    return 0
