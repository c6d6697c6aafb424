"""MusicGen's delay pattern, exactly as transformers' `build_delay_pattern_mask`.

Codebook k is delayed by d_k frames: d_k = k for mono; for stereo (left/right codebooks
interleaved, 2c and 2c + 1 being EnCodec codebook c of each channel) d_k = k // 2, so
both channels' codebook c share a delay. With C = K / channels codebooks per channel, in
a sequence of `length` positions (position 0 is the BOS frame), codebook k holds the pad
id at positions p <= d_k (BOS padding) and at p >= length - C + 1 + d_k (EOS padding);
elsewhere position p holds frame p - 1 - d_k.
"""

from __future__ import annotations

import numpy as np


class DelayPattern:
    def __init__(self, num_codebooks: int, length: int, pad_id: int, audio_channels: int = 1):
        assert num_codebooks % audio_channels == 0, (num_codebooks, audio_channels)
        self.K, self.length, self.pad_id = num_codebooks, length, pad_id
        self.span = num_codebooks // audio_channels  # C: the delays are 0..C-1
        self.delays = np.arange(num_codebooks) // audio_channels  # [K]
        pos = np.arange(length)[None, :]
        book = self.delays[:, None]
        # forced: [K, length] True where the pattern fixes the pad id.
        self.forced = (pos <= book) | (pos >= length - self.span + 1 + book)

    @classmethod
    def for_shapes(cls, shapes, length: int) -> "DelayPattern":
        """The pattern of a model (ModelShapes) over `length` positions."""
        return cls(shapes.num_codebooks, length, shapes.pad_token_id, shapes.audio_channels)

    @property
    def frames(self) -> int:
        return self.length - self.span

    @property
    def steps(self) -> int:
        """Decoder steps that fill the sequence (position 0 is given)."""
        return self.length - 1

    def apply(self, column: np.ndarray, position: int) -> np.ndarray:
        """column: [rows, K] codes at `position`, with forced entries set to pad (in place)."""
        column[:, self.forced[:, position]] = self.pad_id
        return column

    @property
    def max_delay(self) -> int:
        return self.span - 1

    def completed_frames(self, filled: int) -> int:
        """Frames whose every codebook is known once positions 0..filled are filled: codebook
        k holds frame f at position f + 1 + d_k, so frame f is complete at f + 1 + max_delay."""
        return max(0, min(filled - self.max_delay, self.frames))

    def frame_of(self, position: int) -> np.ndarray:
        """[K] frame index that each codebook holds at `position` (meaningless where forced)."""
        return position - 1 - self.delays

    def to_frames(self, sequence: np.ndarray, frames: int | None = None) -> np.ndarray:
        """sequence: [..., K, length] with the pattern -> codes [..., K, frames] (a copy); `frames`
        takes a prefix (a running request's completed_frames)."""
        frames = self.frames if frames is None else frames
        assert 0 <= frames <= self.frames, (frames, self.frames)
        out = np.empty(sequence.shape[:-2] + (self.K, frames), dtype=np.int64)
        for k, d in enumerate(self.delays):
            out[..., k, :] = sequence[..., k, d + 1 : d + 1 + frames]
        return out

    def from_frames(self, codes: np.ndarray) -> np.ndarray:
        """codes: [rows, K, frames] -> sequence [rows, K, length] with the pattern applied."""
        rows = codes.shape[0]
        seq = np.full((rows, self.K, self.length), self.pad_id, dtype=np.int64)
        for k, d in enumerate(self.delays):
            seq[:, k, d + 1 : d + 1 + self.frames] = codes[:, k]
        return seq
