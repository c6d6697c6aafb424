"""Small per-step hooks for the generation loop: code overrides (teacher forcing,
time-region copy) and cross-attention recorders (capture, plots)."""

from __future__ import annotations

import numpy as np

from editgen.engine.delay import DelayPattern


class ForceFrames:
    """Overwrites `rows` with given codes at the frames where `frame_mask` is True,
    respecting the delay pattern (at position p codebook k holds frame p - 1 - k).

    The codes come from `source_codes` [K, frames] (teacher forcing, a captured source)
    or, with `from_row`, from another row sampled at the same step (paired region edit).
    """

    def __init__(self, pattern: DelayPattern, rows, frame_mask: np.ndarray, *,
                 source_codes: np.ndarray | None = None, from_row: int | None = None):
        if (source_codes is None) == (from_row is None):
            raise TypeError("give exactly one of source_codes or from_row")
        assert frame_mask.shape == (pattern.frames,), (frame_mask.shape, pattern.frames)
        self.pattern, self.rows = pattern, np.asarray(rows, dtype=np.int64)
        self.frame_mask, self.source_codes, self.from_row = frame_mask, source_codes, from_row
        self._books = np.arange(pattern.K)

    def __call__(self, position: int, codes: np.ndarray) -> None:
        frames = self.pattern.frame_of(position)  # [K]
        inside = (frames >= 0) & (frames < self.pattern.frames)
        books = self._books[inside]
        books = books[self.frame_mask[frames[inside]]]
        if books.size == 0 or self.rows.size == 0:
            return
        if self.from_row is not None:
            values = codes[self.from_row, books]
        else:
            values = self.source_codes[books, frames[books]]
        codes[np.ix_(self.rows, books)] = values


class MeanMaps:
    """Cross-attention averaged over layers and heads: [steps, rows_cond, T] (for plots).
    Takes full maps or, reduced by the backend, [1, rows, 1, T]."""

    means_only = True

    def __init__(self, steps: int, rows: int, text_len: int):
        self.maps = np.zeros((steps, rows, text_len), dtype=np.float32)

    def __call__(self, step: int, cross_attn: np.ndarray) -> None:
        self.maps[step] = cross_attn.mean(axis=(0, 2))  # [layers, rows, heads, T] -> [rows, T]


class RowMaps:
    """One row's full maps, [steps, layers, heads, T], in `dtype` (source capture)."""

    def __init__(self, steps: int, row: int, layers: int, heads: int, text_len: int, dtype=np.float16):
        self.row = row
        self.maps = np.zeros((steps, layers, heads, text_len), dtype=dtype)

    def __call__(self, step: int, cross_attn: np.ndarray) -> None:
        self.maps[step] = cross_attn[:, self.row]
