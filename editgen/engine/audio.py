"""Audio files in and out (soundfile): read to float32 (mono mix and every channel),
resampled where asked; written as 16-bit WAV with one or two channels."""

from __future__ import annotations

import dataclasses
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from editgen.errors import AudioError, first_line

# A clip whose loudest frame is below this is treated as silent: a silent source gives
# an edit nothing to keep, and metrics on it would measure noise.
SILENCE_DBFS = -60.0
# Frame used for the silence check; the same frame/hop as the eval metrics.
_FRAME = 2048
_HOP = 512


@dataclasses.dataclass(frozen=True)
class Clip:
    """A file read to float32 at the file's rate: `samples` [n] the mono mix (the mean of
    the channels), `data` [channels, n] every channel as read."""

    path: str
    samples: np.ndarray
    sample_rate: int
    channels: int
    data: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """wav: [channels, samples] (or [samples], mono) float32 in [-1, 1] (clipped)."""
    wav = np.clip(wav, -1.0, 1.0).astype(np.float32)
    frames = wav.T if wav.ndim == 2 else wav  # soundfile takes [samples, channels]
    sf.write(str(path), frames, sample_rate, subtype="PCM_16", format="WAV")


def check_audio_file(path: str | Path) -> None:
    """Cheap checks (no decoding) so a missing or unreadable file fails before a model loads."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise AudioError(f"cannot read audio {path}: the file {what}")
    try:
        sf.info(str(path))
    except Exception as exc:  # LibsndfileError / RuntimeError / OSError, depending on version
        raise AudioError(f"cannot read audio {path}: {first_line(exc)} (give a WAV, FLAC or OGG file)") from None


def read_clip(path: str | Path) -> Clip:
    """Any file soundfile reads -> mono float32 at the file's rate; every problem a user
    can cause is an AudioError naming the file."""
    check_audio_file(path)
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
    return Clip(str(path), samples, int(rate), int(data.shape[1]), np.ascontiguousarray(data.T))


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 [samples] at the file's rate, rate)."""
    clip = read_clip(path)
    return clip.samples, clip.sample_rate


def check_not_silent(clip: Clip, why: str) -> None:
    loudest = max_frame_dbfs(clip.samples)
    if loudest < SILENCE_DBFS:
        raise AudioError(f"audio {clip.path} is silent (loudest frame {loudest:.1f} dBFS, below "
                         f"{SILENCE_DBFS:.0f} dBFS): {why}")


def max_frame_dbfs(samples: np.ndarray) -> float:
    """Loudest RMS over frames of 2048 hop 512, in dBFS (-inf for digital silence)."""
    if len(samples) <= _FRAME:
        frames = samples[None, :]
    else:
        frames = np.lib.stride_tricks.sliding_window_view(samples, _FRAME)[::_HOP]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)).max()
    with np.errstate(divide="ignore"):
        return float(20.0 * np.log10(rms))


def resample(samples: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """[n] float32 at `rate` -> float32 at `sample_rate` (polyphase)."""
    if rate == sample_rate:
        return samples
    g = gcd(rate, sample_rate)
    return resample_poly(samples, sample_rate // g, rate // g).astype(np.float32)


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any file soundfile reads -> mono float32 [samples] at `sample_rate`."""
    mono, rate = read_mono(path)
    return resample(mono, rate, sample_rate)
