"""`editgen eval`: score edited audio against its source.

    editgen eval --source a.wav --edited b.wav [--target-prompt "..."] [--clap DIR] [-o eval.json]
    editgen eval --batch pairs.csv [--clap DIR] [-o eval.json]

Prints a table and writes a JSON report (atomically). librosa, mir_eval and, with
--clap, torch are imported only when this command runs: the dispatcher imports this
module for every subcommand. The scoring itself is editgen.eval.scoring, shared with
`editgen protocol`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editgen.cli.common import FORMATTER, note
from editgen.cli.outputs import atomic_file, check_writable_file
from editgen.errors import EditGenError, InvalidRequestError

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score edits: melody, dynamics, rhythm (and CLAP with --clap)",
        description="Compare edited audio with its source: melody accuracy (chroma argmax), "
        "dynamics correlation (RMS dB), rhythm F1 (beats, 70 ms), CLAP similarity.",
        formatter_class=FORMATTER,
    )
    p.add_argument("--source", type=Path, help="source (unedited) audio file")
    p.add_argument("--edited", type=Path, help="edited audio file, same sample rate as the source")
    p.add_argument("--target-prompt", help="text the edit aimed for (CLAP text-to-audio score)")
    p.add_argument(
        "--batch", type=Path, metavar="PAIRS.CSV",
        help="CSV with columns source,edited[,target_prompt][,label] (paths relative to the CSV); "
        "reports means with 95%% confidence intervals per label",
    )
    p.add_argument("--clap", type=Path, metavar="DIR", help="local CLAP checkpoint directory (no download)")
    p.add_argument("-o", "--output", type=Path, default=Path("eval.json"),
                   help="JSON report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pairs = pairs_from_args(args)
    output = check_writable_file(args.output)  # fail before minutes of scoring
    scorer = open_scorer(args.clap)
    batch = args.batch is not None
    from editgen.eval import report
    from editgen.eval.scoring import score_pairs

    scored = score_pairs(pairs, scorer, batch=batch, wrap=progress_wrap())

    if batch:
        print(report.format_batch_table(scored.results, report.group_summaries(scored.results)))
    else:
        print(report.format_pair_table(scored.results[0]))
    for line in scored.notes:
        note(line)
    with atomic_file(output) as tmp:
        tmp.write_text(json.dumps(scored.to_json(), indent=2, allow_nan=False) + "\n")
    print(f"wrote {output}")
    return 0


def eval_modules():
    """editgen.eval, or the one-line error that says which extra to install."""
    try:
        import editgen.eval
        from editgen.eval import metrics  # noqa: F401  (librosa, mir_eval)
    except ImportError as exc:
        raise EditGenError(
            f"editgen eval needs librosa and mir_eval ({exc}): pip install 'editgen[eval]'"
        ) from exc
    return editgen.eval


def open_scorer(clap: Path | None):
    """The CLAP scorer of --clap (None without it). Call it before long work: a broken
    directory fails here, in seconds, and checks that the eval extra is installed."""
    eval_modules()
    if clap is None:
        return None
    from editgen.eval.clap import ClapScorer

    return ClapScorer(clap)


def pairs_from_args(args: argparse.Namespace) -> list:
    from editgen.eval import Pair

    if args.batch is not None:
        if args.source is not None or args.edited is not None or args.target_prompt is not None:
            raise InvalidRequestError(
                "--batch takes sources, edits and prompts from the CSV: "
                "drop --source/--edited/--target-prompt"
            )
        from editgen.eval.scoring import read_pairs_csv

        return read_pairs_csv(args.batch)
    if args.source is None or args.edited is None:
        raise InvalidRequestError("give both --source and --edited, or --batch pairs.csv")
    return [Pair(source=args.source, edited=args.edited, target_prompt=args.target_prompt or None)]


def progress_wrap(enabled: bool = True):
    """The pairs' progress bar (score_pairs' `wrap`) when more than one pair is scored."""
    from editgen.cli.progress import progress

    return lambda pairs: progress(pairs, enabled=enabled and len(pairs) > 1, desc="eval", unit="pair", leave=True)
