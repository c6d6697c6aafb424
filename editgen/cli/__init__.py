"""`editgen` command line. Each subcommand lives in its own module exposing
`register(subparsers)` (adds its parser and sets `func`). User errors (EditGenError)
become one line on stderr and exit code 2; output files are written atomically by the
commands themselves (see editgen.cli.outputs), so a failure leaves none behind."""

from __future__ import annotations

import argparse
import importlib
import sys

from editgen.errors import EditGenError

SUBCOMMANDS = ("generate", "edit", "capture", "export", "eval", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editgen", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
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
