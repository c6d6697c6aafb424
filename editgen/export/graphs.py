"""The five exported graphs: torch modules, tensor names, named dynamic axes and example
inputs for export and validation.

Every graph has static `T` (ModelShapes.max_text_tokens: prompts are padded to it) and
the named dynamic axes of editgen.engine.contract.DYNAMIC_AXES (rows, positions, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import nn

from editgen.engine.config import ModelShapes
from editgen.engine.contract import DYNAMIC_AXES, STEP_EDIT_INPUTS, STEP_OUTPUTS, step_input_names, step_kv_names
from editgen.model.codec import decode_codes, encode_audio
from editgen.model.edit_tensors import EditTensors
from editgen.model.step_module import CrossKV, DecoderStep

__all__ = ["DYNAMIC_AXES", "GraphDef", "graph_defs", "step_input_names"]


class TextEncoder(nn.Module):
    """T5 encoder. input_ids, attention_mask: [prompts, T] int64 -> hidden [prompts, T, text_hidden]."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class EncodecDecode(nn.Module):
    """codes: [clips, K, frames] int64 -> audio [clips, channels, samples] float32 (as
    TorchBackend.decode_audio; stereo: one mono EnCodec decode per channel)."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.audio_encoder
        self.channels = model.config.decoder.audio_channels

    def forward(self, codes):
        return decode_codes(self.codec, codes, self.channels)


class EncodecEncode(nn.Module):
    """wav: [channels, samples] float32 -> codes [K, frames] int64 (as TorchBackend.encode_audio)."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.audio_encoder
        self.bandwidth = max(model.audio_encoder.config.target_bandwidths)

    def forward(self, wav):
        return encode_audio(self.codec, wav, self.bandwidth)


def encodec_min_samples(shapes: ModelShapes) -> int:
    """Shortest audio the exported encoder takes: EnCodec pads tiny inputs through a
    Python branch that tracing fixes, so inputs under 4 frames are refused up front."""
    return 4 * (shapes.sample_rate // shapes.frame_rate)


class StepGraph(nn.Module):
    """The exported decoder step: DecoderStep with flat inputs (step_input_names): codes,
    positions, 2 * layers self-attention K/V tensors [rows, heads, positions, head_dim]
    (K, V per layer), 2 * layers cross K/V tensors [rows, heads, T, head_dim], text_mask,
    the edit tensors (EditTensors' fields, in the contract's order). No input is sliced in
    the graph: every consumer of a K/V input is the attention's matmul (tests/test_onnx.py
    checks the graph)."""

    def __init__(self, step: DecoderStep, num_layers: int):
        super().__init__()
        self.step = step
        self.num_layers = num_layers

    def forward(self, codes, positions, *rest):
        n = 2 * self.num_layers
        past, cross, (text_mask, *edit) = rest[:n], rest[n:2 * n], rest[2 * n:]
        return self.step(codes, positions, past[0::2], past[1::2], cross[0::2], cross[1::2], text_mask,
                         EditTensors(*edit))


def example_text_mask(rows: int, T: int) -> torch.Tensor:
    """int64 [rows, T] for example inputs: the conditional half prompts of various lengths,
    the null half all 0."""
    mask = torch.zeros(rows, T, dtype=torch.int64)
    for r in range(rows // 2):
        mask[r, : 2 + (5 * r) % (T - 2)] = 1
    return mask


def identity_edit(rows: int, shapes: ModelShapes, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """The engine's identity edit inputs (EditStepInputs.identity) under graph input `names`."""
    edit = EditTensors.identity(rows, shapes)
    return tuple(getattr(edit, name.removeprefix("edit_")) for name in names)


@dataclasses.dataclass
class GraphDef:
    """How to export one graph: the module, IO names, dynamic axes, and example inputs
    (the first set is traced; every set is validated against the torch module)."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    examples: Callable[[], list[tuple[torch.Tensor, ...]]]
    dtype_follows_export: bool  # fp16 export converts this graph (else it stays fp32)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def graph_defs(model, shapes: ModelShapes, prompts: tuple[tuple, ...]) -> list[GraphDef]:
    """`prompts`: ((ids [T], mask [T]) int64 numpy, ...) real tokenized prompts for examples."""
    s = shapes
    L, H, D, K, T = s.num_layers, s.num_heads, s.head_dim, s.num_codebooks, s.max_text_tokens
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    def text_examples():
        ids = torch.from_numpy(np.stack([p[0] for p in prompts]).astype(np.int64))
        mask = torch.from_numpy(np.stack([p[1] for p in prompts]).astype(np.int64))
        return [(ids, mask), (ids[:1], mask[:1])]

    def cross_examples():
        out = []
        for rows in (4, 2):
            mask = example_text_mask(rows, T)
            out.append((randn(rows, T, s.text_hidden_size) * mask[..., None], mask))
        return out

    def step_example(rows, capacity, positions, edited):
        positions = torch.tensor(positions)  # [rows]: rows of one step sit at different positions
        rows_cond = rows // 2
        codes = torch.randint(0, s.vocab_size + 1, (rows, K), generator=gen)
        past = tuple(randn(rows, H, capacity, D) for _ in range(2 * L))  # K, V per layer
        mask = example_text_mask(rows, T)
        # As CrossKV gives them: masked text positions (all of a null row) are exact zeros.
        keep = mask[:, None, :, None].float()
        cross = tuple(randn(rows, H, T, D) * keep for _ in range(2 * L))
        kv = (*past, *cross)
        edit = EditTensors.identity(rows, s)  # plain generation; an edited example overrides fields
        if edited:
            src = torch.arange(rows)
            src[1:rows_cond] = torch.randint(0, rows_cond, (rows_cond - 1,), generator=gen)
            mapper = torch.softmax(randn(rows, T, T) * 3, dim=-1)  # row-stochastic
            use_captured = torch.zeros(rows)
            use_captured[rows_cond - 1] = 1.0
            captured = torch.softmax(randn(L, rows, H, T), dim=-1)
            self_window = torch.ones(rows)
            self_window[0] = 0.0
            edit = edit._replace(src_row=src, mapper=mapper, alpha=(rand(rows, T) > 0.5).float(),
                                 weight=rand(rows, T) * 4 - 2, window=(rand(rows, T) > 0.5).float(),
                                 blend=rand(rows, L), use_captured=use_captured, captured=captured,
                                 self_blend=rand(rows, L), self_window=self_window)
        return (codes, positions, *kv, mask, *edit)

    def step_examples():
        return [step_example(4, 12, (7, 7, 3, 11), edited=True),
                step_example(6, 5, (0, 0, 4, 2, 0, 1), edited=False), step_example(2, 9, (8, 8), edited=True)]

    hop = s.sample_rate // s.frame_rate

    def decode_examples():
        codes = lambda n, f: torch.randint(0, s.vocab_size, (n, K, f), generator=gen)  # noqa: E731
        return [(codes(2, 12),), (codes(1, 5),)]

    def encode_examples():
        C = s.audio_channels
        return [(randn(C, 12 * hop + 17) * 0.1,), (randn(C, encodec_min_samples(s)) * 0.1,)]

    rows0 = {0: "rows"}  # axis 0 is rows
    step_axes = {"codes": rows0, "positions": rows0, "text_mask": rows0,
                 "logits": rows0, "new_kv": {2: "rows"}, "cross_attn": {1: "rows"}}
    for name in step_kv_names(L):
        step_axes[name] = {0: "rows", 2: "positions"} if name.startswith("past_") else rows0
    for name in STEP_EDIT_INPUTS:
        step_axes[name] = {1: "rows"} if name == "edit_captured" else rows0
    return [
        GraphDef("text_encoder", TextEncoder(model).eval(), ("input_ids", "attention_mask"), ("hidden",),
                 {"input_ids": {0: "prompts"}, "attention_mask": {0: "prompts"}, "hidden": {0: "prompts"}},
                 text_examples, dtype_follows_export=False),
        GraphDef("cross_kv", CrossKV(model).eval(), ("hidden", "text_mask"), ("cross_k", "cross_v"),
                 {"hidden": rows0, "text_mask": rows0, "cross_k": {1: "rows"}, "cross_v": {1: "rows"}},
                 cross_examples, dtype_follows_export=True),
        GraphDef("decoder_step", StepGraph(DecoderStep(model, fused=True), L).eval(), step_input_names(L),
                 STEP_OUTPUTS, step_axes, step_examples, dtype_follows_export=True),
        GraphDef("encodec_decode", EncodecDecode(model).eval(), ("codes",), ("audio",),
                 {"codes": {0: "clips", 2: "frames"}, "audio": {0: "clips", 2: "samples"}},
                 decode_examples, dtype_follows_export=False),
        GraphDef("encodec_encode", EncodecEncode(model).eval(), ("wav",), ("codes",),
                 {"wav": {1: "samples"}, "codes": {1: "frames"}}, encode_examples, dtype_follows_export=False),
    ]
