"""Read audio for evaluation: any file soundfile reads, mixed down to mono float32.

Every problem a user can cause (missing or unreadable file, no samples, silence,
source and edited at different sample rates) is an AudioError whose message names the
file and the fix. Nothing is resampled silently: metrics compare frames at one rate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from editgen.engine.audio import read_mono
from editgen.errors import AudioError

# A file whose loudest frame is below this is treated as silent (metrics on it would
# measure noise: every chroma frame is arbitrary and no beat can be found).
SILENCE_DBFS = -60.0
# Frame used for the silence check; the same frame/hop as the metrics (editgen.eval.metrics).
_FRAME = 2048
_HOP = 512


@dataclasses.dataclass(frozen=True)
class Audio:
    """samples: float32 [n] mono, in [-1, 1] for integer files."""

    path: str
    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def load_audio(path: str | Path) -> Audio:
    """Mono float32 at the file's own rate; raises AudioError for anything unusable."""
    samples, sample_rate = read_mono(path)
    loudest = max_frame_dbfs(samples)
    if loudest < SILENCE_DBFS:
        raise AudioError(
            f"audio {path} is silent (loudest frame {loudest:.1f} dBFS, below {SILENCE_DBFS:.0f} dBFS): "
            "nothing to evaluate"
        )
    return Audio(path=str(path), samples=samples, sample_rate=int(sample_rate))


def max_frame_dbfs(samples: np.ndarray) -> float:
    """Loudest RMS over frames of 2048 hop 512, in dBFS (-inf for digital silence)."""
    if len(samples) <= _FRAME:
        frames = samples[None, :]
    else:
        frames = np.lib.stride_tricks.sliding_window_view(samples, _FRAME)[::_HOP]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)).max()
    with np.errstate(divide="ignore"):
        return float(20.0 * np.log10(rms))


def check_same_rate(source: Audio, edited: Audio) -> None:
    """Frame-wise metrics need one rate; resampling here would hide a pipeline bug."""
    if source.sample_rate != edited.sample_rate:
        raise AudioError(
            f"sample rates differ: source {source.path} is {source.sample_rate} Hz, edited "
            f"{edited.path} is {edited.sample_rate} Hz; resample one to match the other "
            f"(e.g. sox {edited.path} -r {source.sample_rate} out.wav) and run again"
        )
