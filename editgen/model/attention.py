"""DecoderStep's two attentions as swappable parts, and the eager torch reference of each.

A part is built from the step's AttentionDims and has two methods:

    terms(...)                     once per step: the edit inputs (and masks) in the form
                                   its layers read them, computed once, not per layer
    part(layer_index, ..., terms)  one layer

    self-attention   part(i, qkv [rows, 1, 3 * hidden], k_cache, v_cache, terms)
                     -> out [rows, 1, hidden] (heads merged, before the out projection),
                        this position's K/V [rows, 2, heads, head_dim] or None where the
                        part writes its cache itself
    cross-attention  part(i, q [rows, 1, hidden], k, v [rows, heads, T, head_dim], terms)
                     -> out [rows, 1, hidden] (before the out projection),
                        the maps used [rows, heads, 1, T] or None where the part stores
                        them itself

`terms` takes what the implementation needs (the eager self-attention a cache length, the
kernels the pool slots), so each caller builds the terms of the parts it chose. The parts
here are the reference: explicit matmul, softmax, matmul, exported to ONNX. The Triton
kernels and the CUDA C++ library plug in the same way (editgen.kernels.step_attention).
The edit's formulas and why they are written this way: docs/design.md, "The edit".
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from editgen.model.edit_tensors import EditTensors

NEG = torch.finfo(torch.float32).min  # additive mask, as transformers' eager attention


class AttentionDims(NamedTuple):
    heads: int
    head_dim: int
    scale: float  # what q . k is multiplied by: 1/sqrt(head_dim), or 1.0 when q is prescaled


# One query position: [rows, 1, hidden] and [rows, heads, 1, head_dim] have the same
# memory order, so splitting into / merging heads is a reshape (no Transpose in the graph).
def split_heads(t, dims: AttentionDims):  # [rows, 1, hidden] -> [rows, heads, 1, head_dim]
    return t.view(t.shape[0], dims.heads, 1, dims.head_dim)


def merge_heads(t, dims: AttentionDims):  # [rows, heads, 1, head_dim] -> [rows, 1, hidden]
    return t.reshape(t.shape[0], 1, dims.heads * dims.head_dim)


def scores(q, k, dims: AttentionDims):  # q K^T, times the scale unless q is prescaled
    s = q @ k.transpose(-1, -2)
    return s if dims.scale == 1.0 else s * dims.scale


class EagerSelfTerms(NamedTuple):
    bias: torch.Tensor  # [rows, 1, 1, capacity]: 0 at the row's valid cache positions, NEG after
    src_row: torch.Tensor  # int64 [rows]
    self_b: torch.Tensor  # [layers, rows, 1, 1, 1]: b_i while the self window is on, else 0


class EagerSelfAttention:
    """Self-attention over a static-capacity cache, with the source's probabilities injected:
    S = S_own - b * (S_own - S_src), S_src the probabilities of row src_row, which sits at
    the same position (paired rows step together); the values stay the row's own. With
    b = 0, or a row that is its own source, S is S_own bit for bit. The cache is not
    written: this position's K/V is returned for the caller to write."""

    def __init__(self, dims: AttentionDims):
        self.dims = dims

    @staticmethod
    def terms(positions, capacity: int, edit: EditTensors) -> EagerSelfTerms:
        """positions: int64 [rows]; capacity: cache positions read (the "positions" axis)."""
        valid = torch.arange(capacity, device=positions.device)[None, :] < positions[:, None]  # [rows, capacity]
        self_b = (edit.self_blend * edit.self_window[:, None]).T[:, :, None, None, None]
        return EagerSelfTerms(torch.where(valid, 0.0, NEG)[:, None, None, :], edit.src_row, self_b)

    def __call__(self, layer_index: int, qkv, k_cache, v_cache, e: EagerSelfTerms):
        """k_cache, v_cache: [rows, heads, capacity, head_dim]."""
        d = self.dims
        rows = qkv.shape[0]
        q, k_new, v_new = qkv.view(rows, 3 * d.heads, 1, d.head_dim).split(d.heads, dim=1)
        scores_past = scores(q, k_cache, d) + e.bias  # [rows, heads, 1, capacity]
        score_new = scores(q, k_new, d)  # [rows, heads, 1, 1]
        p = torch.softmax(torch.cat([scores_past, score_new], dim=-1), dim=-1)  # [rows, heads, 1, capacity + 1]
        p = p - e.self_b[layer_index] * (p - p[e.src_row])
        out = p[..., :-1] @ v_cache + p[..., -1:] * v_new
        kv = qkv.view(rows, 3, d.heads, d.head_dim)[:, 1:]
        return merge_heads(out, d), kv


class EagerCrossTerms(NamedTuple):
    """The cross-attention's edit tensors, broadcast-ready for [rows, heads, 1, T]
    probabilities (per-layer ones with a leading layers axis). `one_minus_*` hold 1 - x,
    computed once per step."""

    bias: torch.Tensor  # [rows, 1, 1, T] additive text mask
    src_row: torch.Tensor  # int64 [rows]
    use_captured: torch.Tensor  # bool [rows, 1, 1, 1]
    captured: torch.Tensor  # [layers, rows, heads, 1, T]
    mapper: torch.Tensor  # [rows, 1, T, T]
    alpha: torch.Tensor  # [rows, 1, 1, T]
    one_minus_alpha: torch.Tensor
    weight: torch.Tensor
    window: torch.Tensor
    one_minus_window: torch.Tensor
    one_minus_blend: torch.Tensor  # [layers, rows, 1, 1, 1]


class EagerCrossAttention:
    """The edited cross-attention, exactly as docs/design.md writes it ("The edit")."""

    def __init__(self, dims: AttentionDims):
        self.dims = dims

    @staticmethod
    def terms(text_mask, edit: EditTensors) -> EagerCrossTerms:
        """text_mask: [rows, T] (1 valid, 0 padding); reads the cross-attention's edit fields only."""
        e = edit
        return EagerCrossTerms(
            bias=((1.0 - text_mask.to(torch.float32)) * NEG)[:, None, None, :],
            src_row=e.src_row,
            use_captured=e.use_captured[:, None, None, None] > 0.5,
            captured=e.captured[:, :, :, None, :],
            mapper=e.mapper[:, None],
            alpha=e.alpha[:, None, None, :], one_minus_alpha=(1.0 - e.alpha)[:, None, None, :],
            weight=e.weight[:, None, None, :],
            window=e.window[:, None, None, :], one_minus_window=(1.0 - e.window)[:, None, None, :],
            one_minus_blend=(1.0 - e.blend).T[:, :, None, None, None],
        )

    def __call__(self, layer_index: int, q, k, v, e: EagerCrossTerms):
        d = self.dims
        q = split_heads(q, d)
        p_own = torch.softmax(scores(q, k, d) + e.bias, dim=-1)  # [rows, heads, 1, T]
        p_src = torch.where(e.use_captured, e.captured[layer_index], p_own[e.src_row])
        base = p_src @ e.mapper  # [rows, heads, 1, T] @ [rows, 1, T, T]
        inj = (e.alpha * base + e.one_minus_alpha * p_own) * e.weight
        inj = e.window * inj + e.one_minus_window * p_own
        p = p_own - e.one_minus_blend[layer_index] * (p_own - inj)
        return merge_heads(p @ v, d), p
