"""Arguments shared by subcommands, turning them into validated options, and the
one-line notes a command prints when it changes or ignores something the user gave."""

from __future__ import annotations

import argparse
import sys

from editgen.engine.options import GenerationOptions
from editgen.engine.request_fields import RequestField, parse_word_items, request_fields
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


_ARG_TYPES = {"number": float, "integer": int, "text": str}


def add_request_args(p, cls, *, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """The flags of request dataclass `cls` (those in `only`, or all but `skip`), from its
    declaration (editgen.engine.request_fields). A required field's flag is optional here
    (None): the command says when it is needed."""
    for f in request_fields(cls):
        if f.attribute in skip or (only is not None and f.attribute not in only):
            continue
        kwargs: dict = {"dest": f.attribute, "help": f.option.help}
        if f.option.metavar:
            kwargs["metavar"] = f.option.metavar
        kind = f.option.kind
        if kind == "switch":
            kwargs.update(action="store_true", default=f.default)
        elif kind in ("word_numbers", "word_windows"):
            kwargs.update(action="append", default=[])
        else:
            kwargs.update(type=_ARG_TYPES.get(kind, str), default=None if f.required else f.default)
            if f.option.choices:
                kwargs["choices"] = f.option.choices
        p.add_argument(f.flag, *f.option.aliases, **kwargs)


def request_kwargs(cls, args: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> dict:
    """Keyword arguments of `cls` from the flags add_request_args made (word flags parsed)."""
    return {f.attribute: _value(f, getattr(args, f.attribute)) for f in request_fields(cls) if f.attribute not in skip}


def _value(f: RequestField, value):
    return parse_word_items(value, f) if f.option.kind in ("word_numbers", "word_windows") else value


def given_fields(cls, args: argparse.Namespace) -> list[str]:
    """The flags of `cls` set to something other than their default."""
    return [f.flag for f in request_fields(cls) if getattr(args, f.attribute) not in (f.default, [])]


def add_generation_args(p: argparse.ArgumentParser) -> None:
    add_request_args(p, GenerationOptions)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    return GenerationOptions(**request_kwargs(GenerationOptions, args))


def open_from_args(args: argparse.Namespace):
    from editgen.cli.progress import tqdm_available
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
