"""An untrusted audio file (a server upload) read block by block, so that what it costs
is bounded before and while it is decoded.

A few kilobytes of FLAC can claim 384 kHz x 8 channels x 40 s (123 M samples, ~0.5 GB as
float32 before any conversion). So: the header is checked first (rate x channels x
seconds against a budget of samples, AudioTooLargeError), then the file is decoded
`BLOCK_FRAMES` at a time, each block mixed to the model's channels and resampled to its
rate as it comes (BlockResampler: bit-identical to resampling the whole clip at once,
as the CLI does), and decoding stops at the budget even if the header lied. Memory is a
block plus the result at the model's rate, whatever the file claims."""

from __future__ import annotations

import dataclasses
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from editgen.engine.audio import channel_note, check_length, check_loud, sndfile_reason
from editgen.errors import AudioError

# Formats any device records in; past them a file is refused before decoding.
MAX_UPLOAD_RATE = 384_000
MAX_UPLOAD_CHANNELS = 16
# Frames per decoded block: 32768 x 16 channels x 4 bytes = 2 MiB at most.
BLOCK_FRAMES = 32768


class AudioTooLargeError(AudioError):
    """An upload that would decode to more samples than the budget (the server: 413)."""

    code = "audio_too_large"


@dataclasses.dataclass(frozen=True)
class DecodedAudio:
    """An uploaded file at the model's rate and channels: wav float32 [channels, n], and
    notes on what was converted. `path` is what messages call it."""

    path: str
    wav: np.ndarray
    notes: tuple[str, ...]


def read_upload(file, name: str, shapes, *, max_seconds: float, max_samples: int) -> DecodedAudio:
    """A binary file object (WAV, FLAC, OGG) -> DecodedAudio, or an AudioError naming
    `name` and the limit: over MAX_UPLOAD_RATE / MAX_UPLOAD_CHANNELS (400), longer than
    `max_seconds` (AudioTooLongError), or more than `max_samples` samples over all
    channels (AudioTooLargeError)."""
    try:
        sound = sf.SoundFile(file)
    except Exception as exc:  # LibsndfileError / RuntimeError / TypeError, depending on version
        raise AudioError(f"cannot read audio {name}: {sndfile_reason(exc)} (give a WAV, FLAC or OGG file)") from None
    with sound:
        rate, channels = int(sound.samplerate), int(sound.channels)
        _check_header(name, rate, channels, int(sound.frames), max_seconds, max_samples)
        # The header may lie about its length: decoding stops at the budget regardless.
        limit = int(min(max_seconds * rate, max_samples // channels))
        mixed = channels if channels == shapes.audio_channels else 1  # distinct channels kept
        resamplers = [BlockResampler(rate, shapes.sample_rate) for _ in range(mixed)]
        parts: list[list[np.ndarray]] = [[] for _ in range(mixed)]
        read = 0
        try:
            for block in sound.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                read += len(block)  # block: [frames, channels]
                if read > limit:
                    raise AudioTooLargeError(f"audio {name} decodes to more than its header says and more than "
                                             f"this server's limit of {limit} frames at {rate} Hz: trim it")
                if not np.all(np.isfinite(block)):
                    raise AudioError(f"audio {name} contains NaN or infinite samples")
                data = block.T if mixed == channels else block.mean(axis=1)[None]  # [mixed, frames]
                for part, resampler, channel in zip(parts, resamplers, data):
                    part.append(resampler.push(channel))
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(f"cannot read audio {name}: {sndfile_reason(exc)} "
                             "(give a WAV, FLAC or OGG file)") from None
    if read == 0:
        raise AudioError(f"audio {name} has no samples")
    wav = np.stack([np.concatenate(part + [r.finish()]) for part, r in zip(parts, resamplers)])
    wav = np.repeat(wav, shapes.audio_channels // mixed, axis=0)  # a mix plays on every channel
    check_loud(wav.mean(axis=0), name, "give a recording with sound in it")
    notes = [channel_note(name, channels, shapes.audio_channels)]
    if rate != shapes.sample_rate:
        notes.append(f"audio {name} is {rate} Hz: resampled to the model's {shapes.sample_rate} Hz")
    return DecodedAudio(name, wav, tuple(n for n in notes if n))


def _check_header(name: str, rate: int, channels: int, frames: int, max_seconds: float, max_samples: int) -> None:
    if not (0 < rate <= MAX_UPLOAD_RATE) or not (0 < channels <= MAX_UPLOAD_CHANNELS):
        raise AudioError(f"audio {name} claims {rate} Hz and {channels} channels: give a file "
                         f"of at most {MAX_UPLOAD_RATE} Hz and {MAX_UPLOAD_CHANNELS} channels")
    seconds = frames / rate
    check_length(seconds, max_seconds, name)
    if frames * channels > max_samples:
        raise AudioTooLargeError(
            f"audio {name} is {seconds:.2f} s x {channels} channels at {rate} Hz = {frames * channels} samples "
            f"to decode, this server decodes at most {max_samples} per upload: send fewer channels, a lower "
            "rate or a shorter clip")


class BlockResampler:
    """scipy's resample_poly from `rate` to `target`, fed block by block: the samples
    returned by `push` and `finish`, concatenated, equal resample_poly of the whole
    input bit for bit (tested), while only a block and the filter's context are held.

    Why it is exact: an output whose filter support lies inside the buffer is computed
    by upfirdn with the same taps in the same order as in the whole array; the buffer
    starts on a multiple of `down`, so its outputs fall on the whole array's grid; and
    the buffer holds the true start and, in `finish`, the true end."""

    def __init__(self, rate: int, target: int):
        g = gcd(rate, target)
        self.up, self.down = target // g, rate // g
        half_len = 10 * max(self.up, self.down)  # resample_poly's filter half-length (upsampled rate)
        # Input samples of context each output needs on either side, in whole `down` steps.
        self.context = -(-(half_len // self.up + 2) // self.down) * self.down
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # input index of _buf[0], a multiple of `down`
        self._emitted = 0  # outputs returned so far
        self._pushed = 0  # inputs received so far

    def push(self, x: np.ndarray) -> np.ndarray:
        """x: float32 [n] -> the outputs that are now final (float32, possibly none)."""
        x = np.asarray(x, np.float32)
        if self.up == self.down:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        self._pushed += len(x)
        ready = self._pushed - self.context  # inputs with all of their right-hand context
        end = ready * self.up // self.down if ready > 0 else 0
        if end <= self._emitted:
            return np.zeros(0, np.float32)
        out = self._outputs(end)
        keep = max(0, (self._emitted * self.down // self.up - self.context) // self.down * self.down)
        if keep > self._start:  # drop what no later output needs
            self._buf = self._buf[keep - self._start:]
            self._start = keep
        return out

    def finish(self) -> np.ndarray:
        """The remaining outputs, up to ceil(inputs x up / down)."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        return self._outputs(-(-self._pushed * self.up // self.down))

    def _outputs(self, end: int) -> np.ndarray:
        first = self._start * self.up // self.down  # the output index of the buffer's first output
        out = resample_poly(self._buf, self.up, self.down)[self._emitted - first: end - first]
        self._emitted = end
        return out.astype(np.float32, copy=False)
