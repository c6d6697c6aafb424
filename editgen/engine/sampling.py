"""Logit processing and sampling, one small piece each (as whisper's decoding.py).

Every row has its own random stream seeded from the request seed, so a row's tokens do
not depend on which other rows share the batch, and source and target rows that see
equal logits draw equal tokens."""

from __future__ import annotations

import numpy as np


def classifier_free_guidance(logits: np.ndarray, scale: float) -> np.ndarray:
    """logits: [2 * rows, K, V] (conditional half first) -> [rows, K, V].

    Same formula as transformers' ClassifierFreeGuidanceLogitsProcessor."""
    cond, uncond = np.split(logits, 2, axis=0)
    return uncond + (cond - uncond) * scale


class Sampler:
    """Top-k / temperature sampling, or greedy argmax, over [rows, K, V] logits.

    A step's sampling is `draw()` (each row's uniforms from its own stream) then
    `pick_top_k` on those; a backend that samples on its device gets the same uniforms
    (editgen.engine.contract.SamplingBatch) and applies the same rule."""

    def __init__(self, rows: int, *, seed: int, top_k: int, temperature: float, greedy: bool):
        self.top_k, self.temperature, self.greedy = top_k, temperature, greedy
        self.streams = [np.random.Generator(np.random.PCG64(seed)) for _ in range(rows)]

    def draw(self, books: int) -> np.ndarray | None:
        """This step's uniforms [rows, books] (None when greedy: nothing is drawn). One per
        codebook per row, whatever the logits, so every row consumes its stream at the
        same rate."""
        if self.greedy:
            return None
        return np.stack([s.random(books) for s in self.streams])

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits: [rows, K, V] -> codes [rows, K] int64."""
        u = self.draw(logits.shape[1])
        if u is None:
            return logits.argmax(axis=-1).astype(np.int64)
        return pick_top_k(logits, u, self.top_k, self.temperature)


def top_k_ids(scaled: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., V] -> (ids, values) [..., k] of the k largest, ordered by (value desc, id asc):
    the first k of a stable descending sort, ties at the k-th value going to the lower ids."""
    top = np.argpartition(-scaled, k - 1, axis=-1)[..., :k]  # the set, unordered
    values = np.take_along_axis(scaled, top, axis=-1)
    ties = (scaled >= values.min(axis=-1)[..., None]).sum(axis=-1) > k  # argpartition chose among equals
    if ties.any():
        top[ties] = np.argsort(-scaled[ties], axis=-1, kind="stable")[..., :k]
        values[ties] = np.take_along_axis(scaled[ties], top[ties], axis=-1)
    order = np.lexsort((top, -values), axis=-1)
    return np.take_along_axis(top, order, axis=-1), np.take_along_axis(values, order, axis=-1)


def pick_top_k(logits: np.ndarray, u: np.ndarray, top_k: int, temperature: float) -> np.ndarray:
    """logits [rows, K, V], u [rows, K] in [0, 1) -> codes [rows, K] int64: the first of the
    top-k ids (in top_k_ids' order) whose cumulative softmax reaches u of the total."""
    vocab = logits.shape[-1]
    k = min(top_k, vocab)
    scaled = logits.astype(np.float64) / temperature
    top, top_logits = top_k_ids(scaled, k)  # [rows, K, k]
    probs = np.exp(top_logits - top_logits[..., :1])
    cdf = np.cumsum(probs, axis=-1)
    pick = (cdf < (u * cdf[..., -1])[..., None]).sum(axis=-1)  # first index with cdf >= u
    pick = np.minimum(pick, k - 1)
    return np.take_along_axis(top, pick[..., None], axis=-1)[..., 0].astype(np.int64)
