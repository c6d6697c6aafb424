"""Sampling where the logits are (torch, any device): a step returns codes, not logits.

The rule is the host's (editgen.engine.sampling.pick_top_k, contract.SamplingBatch) with
the uniforms the host drew, computed the same way: CFG in float32 as two separate ops,
temperature and softmax in float64, top-k as the first k of a stable descending sort
(ties to the lower id), then the cumulative sum. The codes equal the host's
(tests/test_device_sampling.py); only a draw within a few ulp of the boundary between two
tokens could fall the other way (numpy's and torch's exp may differ in the last bit, and
a GPU sums the cdf as a parallel scan). NaN logits are not handled (they sort first here,
last on the host).
"""

from __future__ import annotations

import numpy as np

from editgen.engine.contract import SamplingBatch


def sample_codes(logits, sampling: SamplingBatch):
    """logits: float32 tensor [R, K, V] on the backend's device -> int64 tensor [N, K]."""
    import torch

    device = logits.device

    def t(a: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    cond = logits[t(sampling.cond_rows)]  # [N, K, V]
    uncond = logits[t(sampling.uncond_rows)]
    scale = t(sampling.guidance)[:, None, None]
    guided = uncond + (cond - uncond) * scale  # as classifier_free_guidance, float32
    has_cfg = t(sampling.cond_rows != sampling.uncond_rows)[:, None, None]
    guided = torch.where(has_cfg, guided, cond)
    codes = guided.argmax(dim=-1)  # greedy rows; first of equal maxima, as numpy
    top_k = np.minimum(sampling.top_k, logits.shape[-1])
    sampled = np.flatnonzero(top_k > 0)
    if sampled.size == 0:
        return codes
    index = t(sampled)
    last = t(top_k[sampled] - 1)[:, None, None]  # [S, 1, 1] each row's k - 1
    scaled = guided[index].double() / t(sampling.temperature[sampled])[:, None, None]  # [S, K, V]
    values, ids = torch.sort(scaled, dim=-1, descending=True, stable=True)
    # Every row's cdf runs over the whole vocabulary, masked after its own k: its length
    # never depends on the other rows' k (a GPU scan's rounding could).
    inside = torch.arange(values.shape[-1], device=device)[None, None, :] <= last
    probs = torch.where(inside, torch.exp(values - values[..., :1]), 0.0)
    cdf = torch.cumsum(probs, dim=-1)  # flat after each row's k: later entries never count below
    total = cdf.gather(-1, last.expand(-1, cdf.shape[1], 1))  # [S, K, 1]
    pick = (cdf < t(sampling.uniforms[sampled])[..., None] * total).sum(dim=-1)  # first index with cdf >= u
    pick = torch.minimum(pick, last[..., 0])
    codes[index] = ids.gather(-1, pick[..., None])[..., 0]
    return codes
