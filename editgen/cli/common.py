"""Arguments shared by subcommands, turning them into validated options, and the
one-line notes a command prints when it changes or ignores something the user gave."""

from __future__ import annotations

import argparse
import sys

from editgen.engine.options import GenerationOptions
from editgen.model.presets import PRESETS  # torch-free: names only

class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default in --help (help texts do not repeat it), except
    options without one (None): "(default: None)" would say nothing."""

    def _get_help_string(self, action):
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text, width):
        # Never wrap inside a hyphenated name (random:tiny-stereo, musicgen-stereo-small).
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


FORMATTER = _DefaultsFormatter
MODEL_HELP = ("MusicGen checkpoint directory (Hugging Face layout), hub id (e.g. facebook/musicgen-small; "
              "needs network), or random:PRESET with PRESET one of " + ", ".join(PRESETS)
              + " (seeded random weights with real shapes: timings are real, the audio is not music)")


def note(message: str) -> None:
    """One line on stderr for something done silently otherwise (a conversion, an ignored option)."""
    print(f"editgen: note: {message}", file=sys.stderr)


def add_parser(sub, name: str, *, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                          formatter_class=FORMATTER)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help=MODEL_HELP)
    g.add_argument("--engine", help="engine directory written by `editgen export` (runs on ONNX Runtime)")
    p.add_argument("--backend", choices=("torch", "ort", "triton"),
                   help="torch (the default) or triton for --model, ort for --engine; triton runs the fused "
                        "attention kernels on a CUDA GPU, or on CPU under TRITON_INTERPRET=1 (slow, for checks)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=8.0,
                   help="duration of the audio; rounded to the nearest frame (20 ms), at least 0.08 s")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (<= 1: off)")
    p.add_argument("--top-k", type=int, default=250, help="sample from the K most likely codes of each codebook")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed; each row has its own stream from it")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    return GenerationOptions(seconds=args.seconds, guidance_scale=args.guidance, top_k=args.top_k,
                             temperature=args.temperature, greedy=args.greedy, seed=args.seed)


def open_from_args(args: argparse.Namespace):
    from editgen.engine.progress import tqdm_available
    from editgen.engine.runtime import open_backend

    backend = open_backend(model=args.model, engine=args.engine, backend=args.backend)
    if getattr(backend, "is_random", False) or (args.model or "").startswith("random:"):
        note("this model has random weights: timings are real, the audio is not music")
    if not getattr(args, "no_progress", True) and not tqdm_available():
        note("no progress bar: tqdm is not installed (pip install 'editgen[cli]')")
    return backend


def note_request(backend, options: GenerationOptions, prompts: dict[str, str]) -> None:
    """Notes for what the model will quietly do with this request (engine.notes)."""
    from editgen.engine.notes import request_notes

    for line in request_notes(backend, options, prompts):
        note(line)
