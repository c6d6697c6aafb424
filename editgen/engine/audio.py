"""Audio files in and out (soundfile): read to float32 (mono mix and every channel),
resampled where asked; written as 16-bit WAV with one or two channels."""

from __future__ import annotations

import contextlib
import dataclasses
from math import gcd
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from editgen.engine.windows import DEFAULT_MAX_SECONDS
from editgen.errors import AudioError, AudioTooLongError, first_line

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
    write_wav_chunks(path, [wav if wav.ndim == 2 else wav[None]], sample_rate)


def write_wav_chunks(path: str | Path, chunks: Iterable[np.ndarray], sample_rate: int) -> None:
    """chunks: float32 [channels, samples] each, in [-1, 1] (clipped), written as they come:
    a long song is never in memory at once."""
    with contextlib.ExitStack() as stack:
        out = None
        for wav in chunks:
            if out is None:  # soundfile takes [samples, channels]
                out = stack.enter_context(sf.SoundFile(str(path), "w", sample_rate, wav.shape[0], "PCM_16",
                                                       format="WAV"))
            out.write(np.clip(wav, -1.0, 1.0).astype(np.float32).T)


def check_length(seconds: float, max_seconds: float, name: str) -> None:
    """An audio file longer than the longest song accepted (a setting: --max-seconds)."""
    if seconds > max_seconds:
        raise AudioTooLongError(f"audio {name} is {seconds:.2f} s, longer than the maximum of {max_seconds:g} s: "
                                "trim it")


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


def read_clip(path: str | Path, max_seconds: float = DEFAULT_MAX_SECONDS) -> Clip:
    """Any file soundfile reads -> mono float32 at the file's rate; every problem a user
    can cause is an AudioError naming the file (a file over `max_seconds`: before decoding)."""
    check_audio_file(path)
    check_length(sf.info(str(path)).duration, max_seconds, str(path))
    return _decode(str(path), str(path))


def _decode(source, name: str) -> Clip:
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot read audio {name}: {sndfile_reason(exc)} (give a WAV, FLAC or OGG file)") from None
    # data: [n, channels]; a plain mean keeps the level of a centred stereo mix.
    samples = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"audio {name} has no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"audio {name} contains NaN or infinite samples")
    return Clip(name, samples, int(rate), int(data.shape[1]), np.ascontiguousarray(data.T))


def sndfile_reason(exc: BaseException) -> str:
    """libsndfile's reason without its "Error opening <file object at 0x...>: " prefix."""
    line = first_line(exc)
    return line.split(">: ", 1)[1] if line.startswith("Error opening <") and ">: " in line else line


def model_channels(clip: Clip, channels: int) -> tuple[np.ndarray, str | None]:
    """The clip's samples as the model takes them: [channels, n] at the file's rate, and a
    note for what was converted. A stereo model keeps a stereo file's channels; a mono
    file plays on both channels (as transformers turns mono codes into stereo ones); a
    mono model, or a file with more channels than two, gets the mix (mean of channels)."""
    if clip.channels == channels:
        return clip.data, None
    return np.repeat(clip.samples[None], channels, axis=0), channel_note(clip.path, clip.channels, channels)


def channel_note(path: str, file_channels: int, channels: int) -> str | None:
    """What model_channels did to a file of `file_channels` for a model of `channels`."""
    if file_channels == channels:
        return None
    if channels == 1:
        return f"audio {path} has {file_channels} channels: mixed down to mono (the model is mono)"
    if file_channels == 1:
        return f"audio {path} is mono: the same audio on both channels of the stereo model"
    return (f"audio {path} has {file_channels} channels: mixed down to mono and used for both channels "
            "of the stereo model")


def prepare_source(clip: Clip, shapes) -> tuple[np.ndarray, list[str]]:
    """A source clip -> (float32 [channels, samples] at the model's rate and channels,
    notes on what was converted). Its length was checked when it was read."""
    data, channel_note = model_channels(clip, shapes.audio_channels)  # [channels, n]
    notes = [channel_note] if channel_note else []
    if clip.sample_rate != shapes.sample_rate:
        notes.append(f"audio {clip.path} is {clip.sample_rate} Hz: resampled to the model's {shapes.sample_rate} Hz")
    wav = np.stack([resample(channel, clip.sample_rate, shapes.sample_rate) for channel in data])
    return wav, notes


def check_source_codes(clip: Clip, codes: np.ndarray, shapes) -> str:
    """Checks the encoded source codes [K, frames]; returns the note on the duration."""
    frames = codes.shape[-1]
    if frames < 1:
        raise AudioError(f"audio {clip.path} is too short: it gives no frame at {shapes.frame_rate} frames/s")
    return (f"the duration comes from the audio ({frames / shapes.frame_rate:.2f} s, {frames} frames); "
            "--seconds is ignored")


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 [samples] at the file's rate, rate)."""
    clip = read_clip(path)
    return clip.samples, clip.sample_rate


def check_not_silent(clip: Clip, why: str) -> None:
    check_loud(clip.samples, clip.path, why)


def check_loud(samples: np.ndarray, path: str, why: str) -> None:
    """samples: mono float32 [n]; an AudioError if its loudest frame is below SILENCE_DBFS."""
    loudest = max_frame_dbfs(samples)
    if loudest < SILENCE_DBFS:
        raise AudioError(f"audio {path} is silent (loudest frame {loudest:.1f} dBFS, below "
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
