"""WAV in and out (soundfile), resampled to the model's rate and mixed to mono."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from editgen.errors import AudioError


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """wav: [samples] float32 in [-1, 1] (clipped)."""
    sf.write(str(path), np.clip(wav, -1.0, 1.0).astype(np.float32), sample_rate, subtype="PCM_16", format="WAV")


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any file soundfile reads -> mono float32 [samples] at `sample_rate`."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise AudioError(f"cannot read audio {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio {path} is empty")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        g = gcd(rate, sample_rate)
        mono = resample_poly(mono, sample_rate // g, rate // g).astype(np.float32)
    return mono
