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
    """Top-k / temperature sampling, or greedy argmax, over [rows, K, V] logits."""

    def __init__(self, rows: int, *, seed: int, top_k: int, temperature: float, greedy: bool):
        self.top_k, self.temperature, self.greedy = top_k, temperature, greedy
        self.streams = [np.random.Generator(np.random.PCG64(seed)) for _ in range(rows)]

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits: [rows, K, V] -> codes [rows, K] int64."""
        if self.greedy:
            return logits.argmax(axis=-1).astype(np.int64)
        rows, books, vocab = logits.shape
        k = min(self.top_k, vocab)
        # Draw first, one uniform per codebook per row, so every row consumes its stream
        # at the same rate whatever its logits.
        u = np.stack([s.random(books) for s in self.streams])  # [rows, K]
        scaled = logits.astype(np.float64) / self.temperature
        top = np.argpartition(-scaled, k - 1, axis=-1)[..., :k]  # [rows, K, k], unordered
        top_logits = np.take_along_axis(scaled, top, axis=-1)
        # Order by (logit desc, id asc) so the draw is independent of argpartition's order.
        order = np.lexsort((top, -top_logits), axis=-1)
        top = np.take_along_axis(top, order, axis=-1)
        top_logits = np.take_along_axis(top_logits, order, axis=-1)
        probs = np.exp(top_logits - top_logits[..., :1])
        cdf = np.cumsum(probs, axis=-1)
        pick = (cdf < (u * cdf[..., -1])[..., None]).sum(axis=-1)  # first index with cdf >= u
        pick = np.minimum(pick, k - 1)
        return np.take_along_axis(top, pick[..., None], axis=-1)[..., 0].astype(np.int64)
