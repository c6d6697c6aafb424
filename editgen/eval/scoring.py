"""Scoring pairs of source and edited audio: the one scoring path of `editgen eval`
and `editgen protocol` (the CLI commands only read arguments and print). Every file is
read and checked before the first pair is scored."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Callable, Iterable

from editgen.errors import InvalidRequestError
from editgen.eval import Pair, check_pairs, evaluate_pair, metrics, report

CSV_REQUIRED = ("source", "edited")
CSV_OPTIONAL = ("target_prompt", "label")
CSV_HEADER = "source,edited[,target_prompt][,label]"
CLAP_OMITTED = (
    "CLAP columns omitted: pass --clap DIR (a local LAION-CLAP checkpoint in transformers "
    "ClapModel layout, e.g. laion/clap-htsat-unfused) to score them"
)


@dataclasses.dataclass(frozen=True)
class Scored:
    """What `editgen eval` computed: one EvalResult per pair, the notes to print, the
    scoring settings; `to_json()` is the report it writes."""

    results: tuple  # EvalResult per pair, in order
    notes: tuple[str, ...]
    settings: dict
    batch: bool

    def to_json(self) -> dict:
        return report.build_json(self.results, self.settings, self.notes, batch=self.batch)


def score_pairs(pairs: list, scorer, *, batch: bool,
                wrap: Callable[[list], Iterable] = lambda pairs: pairs) -> Scored:
    """Score `pairs` (EvalResult each, with notes and settings). `wrap` may wrap the pairs'
    iteration (the CLI's progress bar; anything with close() is closed at the end, so an
    error is printed on a line of its own). A bad row 2 must not cost the minutes of row 1."""
    check_pairs(pairs)
    items = wrap(pairs)
    try:
        results = tuple(evaluate_pair(pair, scorer) for pair in items)
    finally:
        getattr(items, "close", lambda: None)()

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


def read_pairs_csv(path: Path) -> list:
    """Rows of source,edited[,target_prompt][,label]; relative paths resolve against the CSV's folder."""
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
