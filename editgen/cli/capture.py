"""editgen capture: record a source (generated, or teacher-forced on a WAV) with its
cross-attention maps into one .npz, to edit many targets from with `editgen edit --capture`."""

from __future__ import annotations

import numpy as np

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

DTYPES = {"fp16": np.float16, "fp32": np.float32}


def register(sub) -> None:
    p = add_parser(sub, "capture", help="record a source's cross-attention maps for later edits",
                   description="Generate (or, with --audio, teacher-force) a source and store its codes and "
                               "cross-attention maps in one .npz, to edit many targets from with "
                               "`editgen edit --capture`.")
    add_model_args(p)
    p.add_argument("--source", required=True, help="source prompt (with --audio: a description of the audio)")
    p.add_argument("--audio", help="capture a real recording: the source is teacher-forced on this WAV's codes")
    p.add_argument("--capture-dtype", choices=tuple(DTYPES), default="fp16",
                   help="precision of the stored maps (fp16: half the size of fp32)")
    add_generation_args(p)
    p.add_argument("-o", "--output", required=True, help="output .npz")
    p.set_defaults(func=run)


def run(args) -> int:
    from editgen.cli.edit import audio_codes, read_source_audio
    from editgen.engine.jobs import capture_source
    from editgen.engine.tokenizer import check_prompt

    out = check_writable_file(args.output)
    if out.suffix != ".npz":
        raise InvalidRequestError(f"capture file {out} must end in .npz")
    check_prompt(args.source, "source prompt")  # before the model loads
    options = generation_options(args)  # validated before the model loads
    clip = read_source_audio(args.audio) if args.audio is not None else None
    with open_from_args(args) as backend:
        note_request(backend, options, {"source prompt": args.source})
        codes = audio_codes(backend, clip) if clip is not None else None
        capture = capture_source(backend, args.source, options, audio_codes=codes,
                                 dtype=DTYPES[args.capture_dtype], progress=not args.no_progress)
    with atomic_file(out) as tmp:
        capture.save(tmp)
    steps = capture.maps.shape[0]
    print(f"wrote {out} ({capture.codes.shape[-1]} frames, {steps} steps of maps in {args.capture_dtype})")
    return 0
