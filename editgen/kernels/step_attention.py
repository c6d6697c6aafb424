"""The fused kernels as DecoderStep's attention parts (editgen.model.attention), for the
triton backend: the split-K decode self-attention (Triton), and the edited cross-attention
as the Triton kernel or as the CUDA C++ library's (libeditgen_kernels, editgen.kernels.cuda_lib).

Unlike the eager parts, these run on the backend's pools: the self-attention's K/V
arguments are the pool's layers [slots, heads, positions, head_dim], read and written by
the kernel at each row's (slot, position) (it returns no new K/V), and the cross-attention
stores its maps into `terms.probs` only when the step asked for them. q and this step's
K/V enter the kernels in the pools' dtype; the kernels do their math in fp32, and their
outputs return to fp32 for the out projections.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from editgen.kernels.cross_attention import edited_cross_attention
from editgen.kernels.decode_attention import decode_self_attention
from editgen.model.attention import AttentionDims
from editgen.model.edit_tensors import EditTensors


class KernelSelfTerms(NamedTuple):
    slots: torch.Tensor  # int64 [R] the pool slot of each row
    positions: torch.Tensor  # int64 [R]
    src_row: torch.Tensor  # int64 [R] (batch rows)
    self_b: torch.Tensor  # [layers, R]: b = self_blend[:, i] * self_window, each layer's row contiguous


class TritonSelfAttention:
    def __init__(self, dims: AttentionDims, dtype: torch.dtype):
        self.dims, self.dtype = dims, dtype

    @staticmethod
    def terms(slots, positions, edit: EditTensors) -> KernelSelfTerms:
        self_b = (edit.self_blend * edit.self_window[:, None]).T.contiguous()
        return KernelSelfTerms(slots, positions, edit.src_row, self_b)

    def __call__(self, layer_index: int, qkv, k_pool, v_pool, e: KernelSelfTerms):
        """qkv: [R, 1, 3 * hidden]; k_pool, v_pool: [slots, heads, positions, head_dim]."""
        d = self.dims
        rows = qkv.shape[0]
        q, k, v = (x.to(self.dtype) for x in qkv.view(rows, 3 * d.heads, d.head_dim).split(d.heads, dim=1))
        out = decode_self_attention(q, k, v, k_pool, v_pool, e.slots, e.positions, e.src_row, e.self_b[layer_index],
                                    d.scale)  # [R, H, D]; k, v written at (slot, position)
        return out.float().reshape(rows, 1, d.heads * d.head_dim), None


class KernelCrossTerms(NamedTuple):
    text_mask: torch.Tensor  # float32 [R, T], 1 valid, 0 padding
    src_row: torch.Tensor  # int64 [R]
    use_captured: torch.Tensor  # [R]
    captured: torch.Tensor  # [layers, R, heads, T]
    mapper: torch.Tensor  # [R, T, T]
    alpha: torch.Tensor  # [R, T]
    weight: torch.Tensor
    window: torch.Tensor
    keep: torch.Tensor  # [layers, R]: the cross blend a_i, each layer's row contiguous
    probs: torch.Tensor | None  # [layers, R, heads, T] receives the maps used, or None: none stored


class TritonCrossAttention:
    def __init__(self, dims: AttentionDims, dtype: torch.dtype):
        self.dims, self.dtype = dims, dtype

    def terms(self, text_mask, edit: EditTensors, want_maps: bool) -> KernelCrossTerms:
        """text_mask: float32 [R, T]; want_maps: whether any row of the step wants its maps."""
        e = edit
        layers, rows, heads, tokens = e.captured.shape
        probs = torch.empty(layers, rows, heads, tokens, device=e.captured.device) if want_maps else None
        return KernelCrossTerms(text_mask, e.src_row, e.use_captured, e.captured, e.mapper, e.alpha, e.weight, e.window,
                                e.blend.T.contiguous(), probs)

    def __call__(self, layer_index: int, q, k, v, e: KernelCrossTerms):
        """q: [R, 1, hidden]; k, v: [R, heads, T, head_dim] in the pools' dtype."""
        d = self.dims
        rows = q.shape[0]
        out = self._kernel(layer_index, q.view(rows, d.heads, d.head_dim).to(self.dtype), k, v, e)  # [R, H, D]
        return out.float().reshape(rows, 1, d.heads * d.head_dim), None

    def _kernel(self, i: int, q, k, v, e: KernelCrossTerms):
        out, _ = edited_cross_attention(q, k, v, e.text_mask, e.src_row, e.use_captured, e.captured[i], e.mapper,
                                        e.alpha, e.weight, e.window, e.keep[i], self.dims.scale,
                                        probs=None if e.probs is None else e.probs[i])
        return out


class CudaLibCrossAttention(TritonCrossAttention):
    """The same part through libeditgen_kernels (fp32 only, CUDA only: the triton backend
    checks both before building it). Not run on a GPU yet."""

    def __init__(self, dims: AttentionDims, dtype: torch.dtype, library):
        assert dtype == torch.float32, "the CUDA C++ kernel takes float32"
        super().__init__(dims, dtype)
        self.library = library  # cuda_lib.CudaKernels

    def _kernel(self, i: int, q, k, v, e: KernelCrossTerms):
        out, used = self.library.edited_cross_attention(
            q=q, k=k, v=v, text_mask=e.text_mask, src_row=e.src_row, use_captured=e.use_captured,
            captured=e.captured[i], mapper=e.mapper, alpha=e.alpha, weight=e.weight, window=e.window, keep=e.keep[i],
            scale=self.dims.scale, probs=e.probs is not None)
        if used is not None:  # the library allocates its maps: one copy, only in steps that want them
            e.probs[i].copy_(used)
        return out
