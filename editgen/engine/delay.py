"""MusicGen's delay pattern, exactly as transformers' `build_delay_pattern_mask`.

Codebook k is delayed by k frames. In a sequence of `length` positions (position 0 is
the BOS frame), codebook k holds the pad id at positions p <= k (BOS padding) and at
p >= length - K + 1 + k (EOS padding); elsewhere position p holds frame p - 1 - k.
"""

from __future__ import annotations

import numpy as np


class DelayPattern:
    def __init__(self, num_codebooks: int, length: int, pad_id: int):
        self.K, self.length, self.pad_id = num_codebooks, length, pad_id
        pos = np.arange(length)[None, :]
        book = np.arange(num_codebooks)[:, None]
        # forced: [K, length] True where the pattern fixes the pad id.
        self.forced = (pos <= book) | (pos >= length - num_codebooks + 1 + book)

    @property
    def frames(self) -> int:
        return self.length - self.K

    @property
    def steps(self) -> int:
        """Decoder steps that fill the sequence (position 0 is given)."""
        return self.length - 1

    def apply(self, column: np.ndarray, position: int) -> np.ndarray:
        """column: [rows, K] codes at `position`, with forced entries set to pad (in place)."""
        column[:, self.forced[:, position]] = self.pad_id
        return column

    def frame_of(self, position: int) -> np.ndarray:
        """[K] frame index that each codebook holds at `position` (meaningless where forced)."""
        return position - 1 - np.arange(self.K)

    def to_frames(self, sequence: np.ndarray) -> np.ndarray:
        """sequence: [rows, K, length] with the pattern -> codes [rows, K, frames]."""
        rows = sequence.shape[0]
        out = np.empty((rows, self.K, self.frames), dtype=np.int64)
        for k in range(self.K):
            out[:, k] = sequence[:, k, k + 1 : k + 1 + self.frames]
        return out

    def from_frames(self, codes: np.ndarray) -> np.ndarray:
        """codes: [rows, K, frames] -> sequence [rows, K, length] with the pattern applied."""
        rows = codes.shape[0]
        seq = np.full((rows, self.K, self.length), self.pad_id, dtype=np.int64)
        for k in range(self.K):
            seq[:, k, k + 1 : k + 1 + self.frames] = codes[:, k]
        return seq
