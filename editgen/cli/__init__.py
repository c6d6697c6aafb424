"""`editgen` command line. Each subcommand lives in its own module exposing
`register(subparsers)` (adds its parser and sets `func`). User errors (EditGenError)
become one line on stderr and exit code 2; output files are written atomically by the
commands themselves (see editgen.cli.outputs), so a failure leaves none behind.

Benchmarks are not a subcommand: they run from a source checkout with
`python -m benchmarks.run` (the installed package does not ship them)."""

from __future__ import annotations

import argparse
import importlib
import sys

from editgen.errors import EditGenError
from editgen.version import __version__

SUBCOMMANDS = ("generate", "edit", "capture", "export", "eval", "protocol", "serve")

DESCRIPTION = (
    "Generate music from a text prompt with MusicGen, and edit it by editing the prompt "
    "(Prompt-to-Prompt: swap, add or reweight words) while keeping the rest of the music. "
    "Runs a checkpoint with torch (--model) or an exported engine with ONNX Runtime (--engine)."
)
EPILOG = "Run `editgen COMMAND --help` for a command's options. Bad input exits with code 2 and one line."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editgen", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"editgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"editgen.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EditGenError as exc:
        print(f"editgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
