"""The decoder step cut at its self-attentions, for the int8-KV engine.

The self-attention over an int8 K/V cache runs outside ONNX (editgen.kernels.cpu_attention:
onnxruntime has no fused attention that reads int8 K/V at memory speed and lets the
probabilities be edited). Everything else is exported as `num_layers + 1` segments, each an
ordinary graph the rowwise int8 export quantizes like the whole step (names:
editgen.engine.contract.segment_io):

    segment 0        codes, positions -> x, qkv            embedding, layer 0's norm + q,k,v
    segment i        x, attn, cross K/V, text_mask, the cross-attention edit inputs
                     -> x, qkv, cross_attn                 layer i-1 after its self-attention
                                                           (out projection, edited cross-
                                                           attention, FFN), layer i's q,k,v
    segment L        ... -> logits, cross_attn             layer L-1's rest, norm, LM heads

x, attn: [rows, 1, hidden]; qkv: [rows, 1, 3 * hidden] (q pre-scaled); cross_attn: [rows,
heads, T] of layer i-1. Chained with the attention between segments, the segments compute
DecoderStep exactly (tests/test_kv8.py).
"""

from __future__ import annotations

from torch import nn

from editgen.engine.contract import SEGMENT_EDIT_INPUTS
from editgen.model.edit_tensors import EditTensors
from editgen.model.step_module import DecoderStep


class StepSegment(nn.Module):
    """Segment `index` (0..num_layers) of `step` (a fused DecoderStep)."""

    def __init__(self, step: DecoderStep, index: int):
        super().__init__()
        self.step, self.index = step, index
        self.num_layers = len(step.layers)

    def forward(self, *inputs):
        step, i = self.step, self.index
        if i == 0:
            codes, positions = inputs
            x = step.embed_codes(codes, positions)
            return x, step.qkv_projection(0, x)
        x, attn, cross_k, cross_v, text_mask, *edit = inputs
        edit = EditTensors.partial(**{name.removeprefix("edit_"): t for name, t in zip(SEGMENT_EDIT_INPUTS, edit)})
        x, p = step.layer_tail(i - 1, x, attn, cross_k, cross_v, step.cross_attention.terms(text_mask, edit))
        p = p.flatten(2)  # [rows, heads, 1, T] -> [rows, heads, T]
        if i == self.num_layers:
            return step.lm_logits(x), p
        return x, step.qkv_projection(i, x), p
