"""The backend contract (v4), torch-free: the decoder step's tensor names and named axes,
the per-step batch the engine core hands a backend, and what a backend returns.

The export (editgen.export.graphs), every backend and the tests read names and axes from
here. A backend owns every device buffer: a pool of KV slots
`[layers, 2, slots, heads, positions, head_dim]` and the cross K/V of admitted rows. The
engine core passes only small per-step arrays (StepBatch) and gets logits and the maps of
the rows that asked for them (StepOutputs): nothing O(cache) crosses this boundary.

    open(max_slots)                      size the pools (allocated on the backend's device)
    admit(slots, hidden, text_mask, edit)  cross K/V and the static edit tensors of these
                                         rows, written once (a persistent batch by slot)
    step(batch) -> StepOutputs           reads its cache, writes this position's K/V at
                                         (slot, position) of every batch row; logits, or
                                         codes where the backend samples on its device
    release(slots)                       the slots are free for the next admit
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.edit.step_inputs import EditStepInputs, StepEdits
from editgen.engine.tokenizer import TextTokenizer

# Fewest rows a step runs (backends pad with identity rows): torch's matmul (and ONNX
# Runtime's MatMulNBits, the earlier int8 method) take another kernel for one row, with
# other rounding, so a row's numbers must not depend on whether it runs alone
# (tests/test_batch_invariance.py). The engine core never sizes itself below it.
MIN_ROWS = 2

# The attention of a row at position p reads `attended_positions(p)` cache positions: a
# multiple of POSITION_BUCKET. Measured on ONNX Runtime (MLAS) and torch CPU kernels: with
# the read length a multiple of 16, a row's attention output is bit-identical whatever the
# length (tests/test_batch_invariance.py); 64 also bounds how often a pool re-strides.
POSITION_BUCKET = 64

DYNAMIC_AXES = {
    "prompts": "prompts encoded at once",
    "rows": "decoder rows of one step: slots 0..rows-1 of the backend's pool",
    "positions": "cache positions the step reads (a multiple of POSITION_BUCKET)",
    "clips": "code sequences decoded at once",
    "frames": "EnCodec frames (frame_rate per second)",
    "samples": "audio samples (sample_rate per second)",
}

STEP_EDIT_INPUTS = tuple(f"edit_{f.name}" for f in dataclasses.fields(EditStepInputs))
STEP_OUTPUTS = ("logits", "new_kv", "cross_attn")


def step_kv_names(num_layers: int) -> tuple[str, ...]:
    """The decoder-step graph's per-layer K/V inputs, in graph order: past_key_0,
    past_value_0, ..., past_value_{L-1} [rows, heads, positions, head_dim], then
    cross_key_0, cross_value_0, ... [rows, heads, T, head_dim]. That is the memory order
    of a pool [layers, 2, slots, ...] and of cross K/V [layers, slots, ...]: each input is
    one contiguous block of a backend buffer. Plain identifiers (valid as ONNX, ONNX
    Runtime, TensorRT and Python names)."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    cross = [f"cross_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return tuple(past + cross)


def step_input_names(num_layers: int) -> tuple[str, ...]:
    return ("codes", "positions", *step_kv_names(num_layers), "text_mask", *STEP_EDIT_INPUTS)


def attended_positions(position: int) -> int:
    """Cache positions a step at `position` reads and writes (the new K/V lands at
    `position`): the smallest multiple of POSITION_BUCKET above it."""
    return (position // POSITION_BUCKET + 1) * POSITION_BUCKET


@dataclasses.dataclass(frozen=True, eq=False)
class StepBatch:
    """One step's rows, from any number of requests at any positions. R = rows.

    The static edit tensors of each slot were given at admission; `edit` holds only what
    changes per step (windows, captured maps), its captured_rows indexing batch rows."""

    slots: np.ndarray  # int64 [R] pool slot of each row (distinct)
    positions: np.ndarray  # int64 [R] position of this step's frame; the row reads positions < it
    codes: np.ndarray  # int64 [R, K] codes of this frame (delay pattern applied)
    edit: StepEdits  # rows R
    want_maps: np.ndarray  # bool [R] rows whose cross-attention maps are returned
    # Every row that wants maps needs only their mean over layers and heads: a backend may
    # return cross_attn as [1, M, 1, T] (reduced where the maps are) instead of in full.
    map_means_only: bool = False
    # Set for backends with `samples_on_device`: they return codes, not logits.
    sampling: SamplingBatch | None = None

    @property
    def rows(self) -> int:
        return int(self.slots.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class SamplingBatch:
    """One step's sampling, for a backend that samples where its logits are. N = the
    step's conditional rows over all its requests, in batch order. Row n's codes: guided =
    uncond + (cond - uncond) * guidance in float32 (guided = cond where uncond_rows[n] ==
    cond_rows[n]); then argmax where top_k is 0, else editgen.engine.sampling.pick_top_k of
    guided with uniforms[n], top_k[n], temperature[n]. The uniforms come from the rows' own
    streams (Sampler.draw), so codes equal the host's for equal logits."""

    cond_rows: np.ndarray  # int64 [N] batch row of each conditional row
    uncond_rows: np.ndarray  # int64 [N] its null-text row (== cond_rows: no guidance)
    guidance: np.ndarray  # float32 [N]
    temperature: np.ndarray  # float64 [N]
    top_k: np.ndarray  # int64 [N], 0 = greedy
    uniforms: np.ndarray  # float64 [N, K] (zeros for greedy rows)


@dataclasses.dataclass
class StepOutputs:
    logits: np.ndarray | None  # float32 [R, K, vocab]; None when the backend sampled (codes)
    cross_attn: np.ndarray  # float32 [layers, M, heads, T] maps used (after the edit), M = want_maps.sum(),
    #                         or [1, M, 1, T] (their means) when the batch allowed it
    codes: np.ndarray | None = None  # int64 [N, K] when batch.sampling was given (SamplingBatch's rows)


class Backend(Protocol):
    name: str
    shapes: ModelShapes
    tokenizer: TextTokenizer

    def open(self, max_slots: int) -> None:
        """Size the pools for slots 0..max_slots-1 (freeing any earlier ones)."""

    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: [n, T] int64 -> T5 hidden states [n, T, text_hidden] float32."""

    def admit(self, slots: np.ndarray, hidden: np.ndarray, mask: np.ndarray, edit: EditStepInputs) -> None:
        """Compute and keep the cross K/V of rows `slots` [R] from hidden [R, T, text_hidden]
        and mask [R, T], and keep their static edit tensors (`edit`, rows R; its src_row
        indexes these R rows); their self-attention caches start empty."""

    def step(self, batch: StepBatch) -> StepOutputs:
        """One decoder step of `batch`; writes each row's K/V at (slot, position). The
        returned arrays may be the backend's buffers: valid until the next call. A backend
        whose class sets `samples_on_device = True` gets `batch.sampling` and returns codes
        (SamplingBatch) instead of logits; the others never see it set."""

    def release(self, slots: np.ndarray) -> None: ...

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """codes: [n, K, frames] -> waveforms [n, channels, samples] float32 at
        shapes.sample_rate, channels = shapes.audio_channels (stereo: codebooks 0, 2, 4, 6
        decode the left channel, 1, 3, 5, 7 the right, each with the mono EnCodec). A
        backend whose class sets `prefix_decode_exact = True` promises that the first f
        frames of a clip decode to the whole clip's samples bit for bit, but for the
        codec's look-ahead (editgen.server.audio_stream)."""

    def encode_audio(self, wav: np.ndarray) -> np.ndarray:
        """wav: [channels, samples] float32 at shapes.sample_rate, channels =
        shapes.audio_channels -> codes [K, frames] int64 (stereo: interleaved as decoded)."""

    def close(self) -> None: ...
