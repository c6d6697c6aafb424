"""Evaluation results: one EvalResult per (source, edited) pair, batch means with 95%
confidence intervals (Student t, per label so blend schedules can be compared), a plain
text table and a JSON document (NaN is written as null, so the file is strict JSON)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# (field, column title), in table order. CLAP columns appear only when CLAP was run.
METRICS: tuple[tuple[str, str], ...] = (
    ("melody_accuracy", "melody acc"),
    ("dynamics_correlation", "dynamics r"),
    ("rhythm_f1", "rhythm F1"),
    ("clap_text", "CLAP text"),
    ("clap_audio", "CLAP audio"),
)
CLAP_FIELDS = ("clap_text", "clap_audio")
# The paper's Table 1 column order: text adherence first, then what the edit kept.
TABLE1_ORDER = ("clap_text", "clap_audio", "melody_accuracy", "dynamics_correlation", "rhythm_f1")
NO_LABEL = "(no label)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Scores of one pair. NaN = undefined (see metrics.dynamics_correlation);
    None = not computed (CLAP without --clap, CLAP text without a target prompt)."""

    source: str
    edited: str
    sample_rate: int
    source_seconds: float
    edited_seconds: float
    compared_seconds: float  # the shorter of the two: all metrics use this span
    melody_accuracy: float
    dynamics_correlation: float
    rhythm_f1: float
    clap_text: float | None = None
    clap_audio: float | None = None
    target_prompt: str | None = None
    label: str | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = {f.name: _json_number(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["notes"] = list(self.notes)
        return out


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean of n values with the half-width of its 95% CI (NaN when n < 2)."""

    n: int
    mean: float
    ci95: float

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "mean": _json_number(self.mean),
            "ci95_low": _json_number(self.mean - self.ci95),
            "ci95_high": _json_number(self.mean + self.ci95),
        }

    def __str__(self) -> str:
        return f"{self.mean:.3f}" if math.isnan(self.ci95) else f"{self.mean:.3f} ± {self.ci95:.3f}"


def summarize(values: Iterable[float | None]) -> Summary | None:
    """t-based 95% CI of the mean; None/NaN values (undefined or not computed) are skipped."""
    from scipy.stats import t

    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if xs.size == 0:
        return None
    if xs.size == 1:
        return Summary(1, float(xs[0]), math.nan)
    half = t.ppf(0.975, xs.size - 1) * xs.std(ddof=1) / math.sqrt(xs.size)
    return Summary(int(xs.size), float(xs.mean()), float(half))


def group_summaries(results: Sequence[EvalResult]) -> dict[str, dict[str, Summary | None]]:
    """{label: {metric: Summary}}; one group "all" when no pair has a label."""
    labelled = any(r.label for r in results)
    groups: dict[str, list[EvalResult]] = {}
    for r in results:
        groups.setdefault((r.label or NO_LABEL) if labelled else "all", []).append(r)
    return {
        label: {field: summarize(getattr(r, field) for r in rows) for field, _ in METRICS}
        for label, rows in groups.items()
    }


def shown_metrics(results: Sequence[EvalResult]) -> list[tuple[str, str]]:
    """Columns to show: CLAP only if it was computed for at least one pair."""
    ran = {f for f in CLAP_FIELDS if any(getattr(r, f) is not None for r in results)}
    return [(f, title) for f, title in METRICS if f not in CLAP_FIELDS or f in ran]


def format_pair_table(result: EvalResult) -> str:
    rows = [[title, _fmt(getattr(result, field))] for field, title in shown_metrics([result])]
    return _table(["metric", "value"], rows)


def format_batch_table(results: Sequence[EvalResult], groups: dict[str, dict[str, Summary | None]]) -> str:
    """One row per label: mean ± 95% CI half-width; "(n=k)" where a metric has fewer values."""
    columns = shown_metrics(results)
    rows = [[label, str(_group_size(results, label)), *_summary_cells(results, label, summaries, columns)]
            for label, summaries in groups.items()]
    return _table(["label", "pairs"] + [title for _, title in columns], rows)


def table1_columns(results: Sequence[EvalResult], titles: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(field, title) of the paper's Table 1 that these results have, in its order; `titles`
    renames columns by field (the protocol's "CLAP text (source)")."""
    shown = dict(shown_metrics(results))
    names = {**shown, **(titles or {})}
    return [(f, names[f]) for f in TABLE1_ORDER if f in shown]


def methods_cells(results: Sequence[EvalResult], groups: dict[str, dict[str, Summary | None]],
                  labels: Sequence[str]) -> list[list[str]]:
    """[label][table1 column] cell texts: mean ± 95% CI half-width, "n/a" where no pair
    had the metric defined, "(n=k)" where only k had."""
    columns = table1_columns(results)
    return [_summary_cells(results, label, groups[label], columns) for label in labels]


def format_methods_table(results: Sequence[EvalResult], groups: dict[str, dict[str, Summary | None]],
                         labels: Sequence[str], *, label_title: str = "setting",
                         titles: Mapping[str, str] | None = None) -> str:
    """The paper's Table 1 layout: one row per method (`labels`, in that order), columns
    CLAP text and CLAP audio (when computed), melody, dynamics, rhythm; `n` = pairs;
    `titles` renames columns by field."""
    columns = table1_columns(results, titles)
    rows = [[label, str(_group_size(results, label)), *cells]
            for label, cells in zip(labels, methods_cells(results, groups, labels))]
    return _table([label_title, "n"] + [title for _, title in columns], rows)


def _group_size(results: Sequence[EvalResult], label: str) -> int:
    return len(results) if label == "all" else sum(1 for r in results if (r.label or NO_LABEL) == label)


def _summary_cells(results, label: str, summaries: dict[str, Summary | None], columns) -> list[str]:
    pairs = _group_size(results, label)
    cells = []
    for field, _ in columns:
        s = summaries[field]
        cells.append("n/a" if s is None else str(s) + ("" if s.n == pairs else f" (n={s.n})"))
    return cells


def build_json(results: Sequence[EvalResult], settings: dict, notes: Sequence[str], batch: bool) -> dict:
    doc = {"settings": settings, "notes": list(notes), "pairs": [r.to_json() for r in results]}
    if batch:
        doc["summary"] = {
            label: {field: (s.to_json() if s else None) for field, s in summaries.items()}
            for label, summaries in group_summaries(results).items()
        }
    return doc


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return "n/a (undefined)" if math.isnan(value) else f"{value:.3f}"


def _json_number(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
