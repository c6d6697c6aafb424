"""Source-vs-edited structure metrics: small pure functions on mono float32 arrays at
one sample rate (the caller checks the rates match).

Frames: hop 512 samples, window 2048, at the file's own rate (16 ms hop at 32 kHz), so
chroma and loudness frames line up one to one. If the two arrays differ in length,
frames are compared over the shorter one.

- melody_accuracy: share of frames whose dominant pitch class (argmax of a 12-bin
  constant-Q chromagram) is the same in both. Frames silent in both (below -60 dBFS)
  are left out: their argmax is noise. One tuning, estimated on the source, is used for
  both, so a pitch near a bin edge cannot land in different bins by estimation alone.
- dynamics_correlation: Pearson r of frame RMS in dB (floor -80 dB, so log(0) never
  appears). Identical curves give 1.0 even when constant; otherwise a constant curve
  makes r undefined and the result is NaN (null in JSON, left out of batch means).
- rhythm_f1: beats tracked with librosa in both, F-measure from mir_eval with a 70 ms
  window (the MIREX standard); beats before 5 s are NOT trimmed (clips are short).
"""

from __future__ import annotations

import warnings

import librosa
import mir_eval
import numpy as np

from editgen.errors import AudioError
from editgen.engine.audio import SILENCE_DBFS

HOP_LENGTH = 512
FRAME_LENGTH = 2048
DB_FLOOR = -80.0
BEAT_TOLERANCE_S = 0.07
MIN_BEAT_SECONDS = 1.0
# chroma_cqt covers 7 octaves from C1; its top filter (~4.1 kHz) must fit below Nyquist.
MIN_MELODY_RATE = 11025


def loudness_db(y: np.ndarray, sr: int) -> np.ndarray:
    """Frame RMS in dBFS, floored at DB_FLOOR. -> [frames]"""
    rms = librosa.feature.rms(y=y, frame_length=FRAME_LENGTH, hop_length=HOP_LENGTH)[0]
    with np.errstate(divide="ignore"):  # log10(0) = -inf, clipped to the floor just below
        return np.maximum(20.0 * np.log10(rms.astype(np.float64)), DB_FLOOR)


def pitch_classes(y: np.ndarray, sr: int, tuning: float) -> np.ndarray:
    """Dominant pitch class per frame (0 = C). -> int [frames]"""
    with warnings.catch_warnings():
        # The CQT's low octaves run on a decimated signal; for clips of a few seconds
        # librosa warns that n_fft exceeds that signal. The result is still correct.
        warnings.simplefilter("ignore", UserWarning)
        chroma = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=HOP_LENGTH, tuning=tuning)
    return chroma.argmax(axis=0)  # chroma: [12, frames]


def melody_accuracy(source: np.ndarray, edited: np.ndarray, sr: int) -> float:
    if sr < MIN_MELODY_RATE:
        raise AudioError(
            f"melody accuracy needs a sample rate of at least {MIN_MELODY_RATE} Hz, got {sr} Hz: "
            "resample both files"
        )
    tuning = float(librosa.estimate_tuning(y=source, sr=sr, n_fft=FRAME_LENGTH, hop_length=HOP_LENGTH))
    pc_src, pc_edit = pitch_classes(source, sr, tuning), pitch_classes(edited, sr, tuning)
    voiced_src = loudness_db(source, sr) >= SILENCE_DBFS
    voiced_edit = loudness_db(edited, sr) >= SILENCE_DBFS
    n = min(len(pc_src), len(pc_edit), len(voiced_src), len(voiced_edit))
    # A frame silent in only one track counts as a miss: the edit lost (or added) a note.
    keep = voiced_src[:n] | voiced_edit[:n]
    same = (pc_src[:n] == pc_edit[:n]) & voiced_src[:n] & voiced_edit[:n]
    if not keep.any():
        raise AudioError("melody accuracy: both tracks are silent over the compared span")
    return float(same[keep].mean())


def dynamics_correlation(source: np.ndarray, edited: np.ndarray, sr: int) -> float:
    return loudness_correlation(loudness_db(source, sr), loudness_db(edited, sr))


def loudness_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two loudness curves [frames]; 1.0 if identical, NaN if one is constant."""
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], dtype=np.float64), np.asarray(b[:n], dtype=np.float64)
    if np.array_equal(a, b):
        return 1.0
    if n < 2 or a.std() < 1e-6 or b.std() < 1e-6:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def beat_times(y: np.ndarray, sr: int, name: str = "audio") -> np.ndarray:
    """Beat times in seconds (possibly none); AudioError if the clip is shorter than a beat."""
    seconds = len(y) / sr
    if seconds < MIN_BEAT_SECONDS:
        raise AudioError(
            f"{name} is {seconds:.2f} s long: rhythm F1 needs at least {MIN_BEAT_SECONDS:.1f} s of audio"
        )
    _, beats = librosa.beat.beat_track(y=y, sr=sr, hop_length=HOP_LENGTH, units="time")
    return np.asarray(beats, dtype=np.float64)


def rhythm_f1(source: np.ndarray, edited: np.ndarray, sr: int) -> float:
    """NaN (undefined, reported with a note) when either clip has no pulse to track:
    ambient music should still get its melody and dynamics scores."""
    reference = beat_times(source, sr, "source")
    estimated = beat_times(edited, sr, "edited")
    if len(reference) == 0 or len(estimated) == 0:
        return float("nan")
    return float(mir_eval.beat.f_measure(reference, estimated, f_measure_threshold=BEAT_TOLERANCE_S))
