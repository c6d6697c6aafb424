"""Audio files in and out (soundfile): read to mono float32, resampled where asked."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from editgen.errors import AudioError, first_line


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """wav: [samples] float32 in [-1, 1] (clipped)."""
    sf.write(str(path), np.clip(wav, -1.0, 1.0).astype(np.float32), sample_rate, subtype="PCM_16", format="WAV")


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """Any file soundfile reads -> (mono float32 [samples] at the file's rate, rate);
    every problem a user can cause is an AudioError naming the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise AudioError(f"cannot read audio {path}: the file {what}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(f"cannot read audio {path}: {first_line(exc)} (give a WAV, FLAC or OGG file)") from None
    # data: [n, channels]; a plain mean keeps the level of a centred stereo mix.
    samples = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"audio {path} has no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"audio {path} contains NaN or infinite samples")
    return samples, int(rate)


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any file soundfile reads -> mono float32 [samples] at `sample_rate`."""
    mono, rate = read_mono(path)
    if rate != sample_rate:
        g = gcd(rate, sample_rate)
        mono = resample_poly(mono, sample_rate // g, rate // g).astype(np.float32)
    return mono
