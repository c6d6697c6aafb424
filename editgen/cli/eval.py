"""`editgen eval`: score edited audio against its source.

    editgen eval --source a.wav --edited b.wav [--target-prompt "..."] [--clap DIR] [-o eval.json]
    editgen eval --batch pairs.csv [--clap DIR] [-o eval.json]

Prints a table and writes a JSON report (atomically). librosa, mir_eval and, with
--clap, torch are imported only when this command runs: the dispatcher imports this
module for every subcommand. `score_pairs` is the one scoring path: `editgen protocol`
scores its edits through it too."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

from editgen.cli.common import FORMATTER, note
from editgen.cli.outputs import atomic_file, check_writable_file
from editgen.errors import EditGenError, InvalidRequestError

CSV_REQUIRED = ("source", "edited")
CSV_OPTIONAL = ("target_prompt", "label")
CSV_HEADER = "source,edited[,target_prompt][,label]"
CLAP_OMITTED = (
    "CLAP columns omitted: pass --clap DIR (a local LAION-CLAP checkpoint in transformers "
    "ClapModel layout, e.g. laion/clap-htsat-unfused) to score them"
)


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
    scored = score_pairs(pairs, scorer, batch=batch)
    from editgen.eval import report

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


@dataclasses.dataclass(frozen=True)
class Scored:
    """What `editgen eval` computed: one EvalResult per pair, the notes to print, the
    scoring settings; `to_json()` is the report it writes."""

    results: tuple  # EvalResult per pair, in order
    notes: tuple[str, ...]
    settings: dict
    batch: bool

    def to_json(self) -> dict:
        from editgen.eval import report

        return report.build_json(self.results, self.settings, self.notes, batch=self.batch)


def score_pairs(pairs: list, scorer, *, batch: bool, progress: bool = True) -> Scored:
    """Score `pairs` as `editgen eval` does (the one scoring path: `editgen protocol` calls
    it too). Every file is read and checked before the first pair is scored: a bad row 2
    must not cost the minutes of row 1, nor print its error over a progress bar."""
    ev = eval_modules()
    metrics = ev.metrics
    ev.check_pairs(pairs)
    bar = _progress(pairs, progress)
    try:
        results = tuple(ev.evaluate_pair(pair, scorer) for pair in bar)
    finally:  # ends the bar's line, so an error is printed on a line of its own
        getattr(bar, "close", lambda: None)()

    notes = [] if scorer else [CLAP_OMITTED]
    if batch:
        notes += [f"pair {i} ({r.edited}): {note}" for i, r in enumerate(results, 1) for note in r.notes]
    else:
        notes += list(results[0].notes)
    settings = {
        "hop_length": metrics.HOP_LENGTH, "frame_length": metrics.FRAME_LENGTH,
        "chroma": "librosa chroma_cqt, 12 bins, argmax; tuning estimated on the source",
        "loudness_db_floor": metrics.DB_FLOOR, "silence_dbfs": metrics.SILENCE_DBFS,
        "beat_tolerance_s": metrics.BEAT_TOLERANCE_S, "min_beat_seconds": metrics.MIN_BEAT_SECONDS,
        "confidence_interval": "95%, Student t", "clap": scorer.model_dir if scorer else None,
        "clap_sample_rate": scorer.sample_rate if scorer else None,
    }
    return Scored(results, tuple(notes), settings, batch)


def pairs_from_args(args: argparse.Namespace) -> list:
    from editgen.eval import Pair

    if args.batch is not None:
        if args.source is not None or args.edited is not None or args.target_prompt is not None:
            raise InvalidRequestError(
                "--batch takes sources, edits and prompts from the CSV: "
                "drop --source/--edited/--target-prompt"
            )
        return read_pairs_csv(args.batch)
    if args.source is None or args.edited is None:
        raise InvalidRequestError("give both --source and --edited, or --batch pairs.csv")
    return [Pair(source=args.source, edited=args.edited, target_prompt=args.target_prompt or None)]


def read_pairs_csv(path: Path) -> list:
    """Rows of source,edited[,target_prompt][,label]; relative paths resolve against the CSV's folder."""
    from editgen.eval import Pair

    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"batch file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets add a BOM
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            _check_header(path, header)
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidRequestError(f"cannot read batch file {path}: {exc}") from exc
    pairs = []
    for line, row in rows:
        if None in row:
            raise InvalidRequestError(
                f"{path} line {line}: more values than columns (quote prompts that contain commas)"
            )
        values = {k: (v or "").strip() for k, v in row.items()}
        for column in CSV_REQUIRED:
            if not values[column]:
                raise InvalidRequestError(f"{path} line {line}: empty {column}")
        pairs.append(Pair(
            source=path.parent / values["source"], edited=path.parent / values["edited"],
            target_prompt=values.get("target_prompt") or None, label=values.get("label") or None,
        ))
    if not pairs:
        raise InvalidRequestError(f"batch file {path} has a header but no pairs")
    return pairs


def _check_header(path: Path, header: list[str]) -> None:
    if not header:
        raise InvalidRequestError(f"batch file {path} is empty: the first line must be {CSV_HEADER}")
    unknown = [h for h in header if h not in CSV_REQUIRED + CSV_OPTIONAL]
    missing = [h for h in CSV_REQUIRED if h not in header]
    if unknown or missing or len(set(header)) != len(header):
        raise InvalidRequestError(
            f"batch file {path} has columns {','.join(header)}: expected {CSV_HEADER}"
        )


def _progress(pairs: list, enabled: bool = True):
    from editgen.cli.progress import progress

    return progress(pairs, enabled=enabled and len(pairs) > 1, desc="eval", unit="pair", leave=True)
