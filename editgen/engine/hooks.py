"""Small per-step hooks for the generation loop: code overrides (teacher forcing,
time-region copy) and cross-attention recorders (capture, plots)."""

from __future__ import annotations

import numpy as np


class ForceFrames:
    """Overwrites `rows` with given codes at the song frames where `frame_mask` [frames]
    is True. Called with the song frame each codebook holds at the new position (the
    delay pattern: codebook k holds frame p - 1 - d_k; -1 where it pads) and the codes.

    The codes come from `source_codes` [K, frames] (teacher forcing, a captured source)
    or, with `from_row`, from another row sampled at the same step (paired region edit).
    """

    def __init__(self, rows, frame_mask: np.ndarray, *, source_codes: np.ndarray | None = None,
                 from_row: int | None = None):
        if (source_codes is None) == (from_row is None):
            raise TypeError("give exactly one of source_codes or from_row")
        assert source_codes is None or source_codes.shape[-1] == frame_mask.shape[0], (source_codes.shape,
                                                                                      frame_mask.shape)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.frame_mask, self.source_codes, self.from_row = frame_mask, source_codes, from_row

    def __call__(self, frames: np.ndarray, codes: np.ndarray) -> None:
        """frames: int64 [K] song frame per codebook (-1: padding); codes: [rows_cond, K]."""
        books = np.flatnonzero(frames >= 0)
        books = books[self.frame_mask[frames[books]]]
        if books.size == 0 or self.rows.size == 0:
            return
        if self.from_row is not None:
            values = codes[self.from_row, books]
        else:
            values = self.source_codes[books, frames[books]]
        codes[np.ix_(self.rows, books)] = values


class MeanMaps:
    """Cross-attention averaged over layers and heads: [steps, rows_cond, T] (for plots),
    by song step (a long request's windows record each song step once).
    Takes full maps or, reduced by the backend, [1, rows, 1, T]."""

    means_only = True

    def __init__(self, steps: int, rows: int, text_len: int):
        self.maps = np.zeros((steps, rows, text_len), dtype=np.float32)

    def __call__(self, step: int, cross_attn: np.ndarray) -> None:
        self.maps[step] = cross_attn.mean(axis=(0, 2))  # [layers, rows, heads, T] -> [rows, T]


class RowMaps:
    """One row's full maps, [steps, layers, heads, T], in `dtype` (source capture), by song step."""

    def __init__(self, steps: int, row: int, layers: int, heads: int, text_len: int, dtype=np.float16):
        self.row = row
        self.maps = np.zeros((steps, layers, heads, text_len), dtype=dtype)

    def __call__(self, step: int, cross_attn: np.ndarray) -> None:
        self.maps[step] = cross_attn[:, self.row]
