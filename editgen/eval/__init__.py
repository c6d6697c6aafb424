"""Evaluation of edits: how much of the source's structure (melody, dynamics, rhythm)
an edited clip keeps, and how close it is to the target prompt (CLAP).

    evaluate_pair(Pair(source=..., edited=...), clap=ClapScorer(dir) or None) -> EvalResult

Needs librosa and mir_eval (pip install 'editgen[eval]'); CLAP also needs torch and
transformers. editgen.cli.eval imports this package only when `editgen eval` runs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from editgen.errors import AudioError
from editgen.eval.audio_io import check_same_rate, load_audio
from editgen.eval.report import EvalResult

if TYPE_CHECKING:
    from editgen.eval.clap import ClapScorer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pair:
    source: Path
    edited: Path
    target_prompt: str | None = None  # CLAP text score only
    label: str | None = None  # batch grouping, e.g. the blend schedule


def evaluate_pair(pair: Pair, clap: ClapScorer | None = None) -> EvalResult:
    """All metrics over the common span (the shorter file); AudioError names both files."""
    from editgen.eval import metrics

    source, edited = load_audio(pair.source), load_audio(pair.edited)
    check_same_rate(source, edited)
    sr = source.sample_rate
    n = min(len(source.samples), len(edited.samples))
    a, b = source.samples[:n], edited.samples[:n]  # [n] each
    notes = []
    if len(source.samples) != len(edited.samples):
        notes.append(
            f"lengths differ (source {source.seconds:.2f} s, edited {edited.seconds:.2f} s): "
            f"compared the first {n / sr:.2f} s"
        )
    try:
        melody = metrics.melody_accuracy(a, b, sr)
        dynamics = metrics.dynamics_correlation(a, b, sr)
        rhythm = metrics.rhythm_f1(a, b, sr)
    except AudioError as exc:
        raise AudioError(f"{pair.source} vs {pair.edited}: {exc}") from exc
    if math.isnan(dynamics):
        notes.append("dynamics r undefined: the loudness of one file is constant")
    if math.isnan(rhythm):
        notes.append("rhythm F1 undefined: no beats found in the source or the edited file")
    clap_text = clap_audio = None
    if clap is not None:
        edited_emb = clap.audio_embedding(b, sr)  # [dim] unit; shared by both scores
        clap_audio = float(edited_emb @ clap.audio_embedding(a, sr))
        if pair.target_prompt:
            clap_text = float(clap.text_embedding(pair.target_prompt) @ edited_emb)
        else:
            notes.append("CLAP text omitted: no target prompt")
    return EvalResult(
        source=str(pair.source), edited=str(pair.edited), sample_rate=sr,
        source_seconds=source.seconds, edited_seconds=edited.seconds, compared_seconds=n / sr,
        melody_accuracy=melody, dynamics_correlation=dynamics, rhythm_f1=rhythm,
        clap_text=clap_text, clap_audio=clap_audio, target_prompt=pair.target_prompt,
        label=pair.label, notes=tuple(notes),
    )
