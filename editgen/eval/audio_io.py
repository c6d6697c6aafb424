"""Read audio for evaluation: any file soundfile reads, mixed down to mono float32.

Stereo files (what stereo MusicGen checkpoints write) are scored on their mono mix, the
mean of the channels: melody, dynamics and rhythm are properties of the music, not of a
channel, and one number per pair keeps batches of mono and stereo files comparable.
EvalResult notes the mixdown.

Every problem a user can cause (missing or unreadable file, no samples, silence,
source and edited at different sample rates) is an AudioError whose message names the
file and the fix. Nothing is resampled silently: metrics compare frames at one rate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from editgen.engine.audio import check_not_silent, read_clip
from editgen.errors import AudioError


@dataclasses.dataclass(frozen=True)
class Audio:
    """samples: float32 [n] mono, in [-1, 1] for integer files."""

    path: str
    samples: np.ndarray
    sample_rate: int
    channels: int = 1  # of the file, before the mixdown

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def load_audio(path: str | Path) -> Audio:
    """Mono float32 at the file's own rate; raises AudioError for anything unusable."""
    clip = read_clip(path)
    check_not_silent(clip, "nothing to evaluate")
    return Audio(path=str(path), samples=clip.samples, sample_rate=clip.sample_rate, channels=clip.channels)


def check_same_rate(source: Audio, edited: Audio) -> None:
    """Frame-wise metrics need one rate; resampling here would hide a pipeline bug."""
    if source.sample_rate != edited.sample_rate:
        raise AudioError(
            f"sample rates differ: source {source.path} is {source.sample_rate} Hz, edited "
            f"{edited.path} is {edited.sample_rate} Hz; resample one to match the other "
            f"(e.g. sox {edited.path} -r {source.sample_rate} out.wav) and run again"
        )
