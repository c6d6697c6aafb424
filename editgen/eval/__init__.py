"""Evaluation of edits: how much of the source's structure (melody, dynamics, rhythm)
an edited clip keeps, and how close it is to the target prompt (CLAP).

    evaluate_pair(Pair(source=..., edited=...), clap=ClapScorer(dir) or None) -> EvalResult

Needs librosa and mir_eval (pip install 'editgen[eval]'); CLAP also needs torch and
transformers. editgen.cli.eval imports this package only when `editgen eval` runs."""

from __future__ import annotations

import dataclasses
import math
import warnings
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


# librosa warnings a user can cause, as the note that explains them (others keep their
# own first line). Warnings become notes: printed with a site-packages path they read
# like a crash, and in --batch they repeated once per pair.
_WARNING_NOTES = {
    "Trying to estimate tuning from empty frequency set": (
        "tuning could not be estimated (no clear pitch in the source): melody assumes A440 tuning"),
}


def check_pairs(pairs: list[Pair]) -> None:
    """Read and check every file of every pair (exists, readable, not silent, same rate)
    before any is scored; errors name the pair's position in a batch."""
    for i, pair in enumerate(pairs, 1):
        try:
            check_same_rate(load_audio(pair.source), load_audio(pair.edited))
        except AudioError as exc:
            raise AudioError(f"pair {i}: {exc}" if len(pairs) > 1 else str(exc)) from None


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    notes: list[str] = []
    for w in caught:
        if not issubclass(w.category, UserWarning):
            continue  # deprecations inside libraries are not the user's business
        text = str(w.message).strip()
        line = next((v for k, v in _WARNING_NOTES.items() if text.startswith(k)),
                    f"librosa: {text.splitlines()[0] if text else type(w.message).__name__}")
        if line not in notes:
            notes.append(line)
    return notes


def evaluate_pair(pair: Pair, clap: ClapScorer | None = None) -> EvalResult:
    """All metrics over the common span (the shorter file); AudioError names both files."""
    from editgen.eval import metrics

    source, edited = load_audio(pair.source), load_audio(pair.edited)
    check_same_rate(source, edited)
    sr = source.sample_rate
    n = min(len(source.samples), len(edited.samples))
    a, b = source.samples[:n], edited.samples[:n]  # [n] each
    notes = [f"{audio.path} has {audio.channels} channels: scored on the mono mix (mean of the channels)"
             for audio in (source, edited) if audio.channels > 1]
    if len(source.samples) != len(edited.samples):
        notes.append(
            f"lengths differ (source {source.seconds:.2f} s, edited {edited.seconds:.2f} s): "
            f"compared the first {n / sr:.2f} s"
        )
    # Beat tracking needs a second of audio; shorter clips still get melody and dynamics.
    rhythm_possible = n / sr >= metrics.MIN_BEAT_SECONDS
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            melody = metrics.melody_accuracy(a, b, sr)
            dynamics = metrics.dynamics_correlation(a, b, sr)
            rhythm = metrics.rhythm_f1(a, b, sr) if rhythm_possible else math.nan
    except AudioError as exc:
        raise AudioError(f"{pair.source} vs {pair.edited}: {exc}") from exc
    notes += _warning_notes(caught)
    if math.isnan(dynamics):
        notes.append("dynamics r undefined: the loudness of one file is constant")
    if not rhythm_possible:
        notes.append(f"rhythm F1 not available: the compared span is {n / sr:.2f} s, beat tracking needs "
                     f"at least {metrics.MIN_BEAT_SECONDS:.1f} s")
    elif math.isnan(rhythm):
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
