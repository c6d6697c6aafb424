"""The step contract every backend implements (docs/design.md, "Step contract").

A backend only computes; the generation loop (editgen.engine.generate) owns the KV
cache, the delay pattern, guidance, sampling and the edit schedule."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.tokenizer import TextTokenizer


@dataclasses.dataclass
class StepOutputs:
    logits: np.ndarray  # [rows, K, vocab] float32
    new_kv: np.ndarray  # [layers, 2, rows, heads, head_dim] K/V of this position
    cross_attn: np.ndarray  # [layers, rows, heads, T] probabilities used (after the edit)


class Backend(Protocol):
    name: str
    shapes: ModelShapes
    tokenizer: TextTokenizer

    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: [n, T] int64 -> T5 hidden states [n, T, text_hidden] float32."""

    def cross_kv(self, hidden: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """hidden: [rows, T, text_hidden], mask: [rows, T] -> K, V [layers, rows, heads, T, head_dim]."""

    def step(self, codes: np.ndarray, position: int, kv_cache: np.ndarray, cross_k: np.ndarray,
             cross_v: np.ndarray, text_mask: np.ndarray, edit) -> StepOutputs:
        """One decoder step; `edit` is an EditStepInputs. Must not write kv_cache."""

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """codes: [n, K, frames] -> waveforms [n, samples] float32 at shapes.sample_rate."""

    def encode_audio(self, wav: np.ndarray) -> np.ndarray:
        """wav: [samples] mono float32 at shapes.sample_rate -> codes [K, frames] int64."""

    def close(self) -> None: ...


class KVCache:
    """Self-attention cache of static capacity, allocated once per request and written
    by position: one frame's K/V per step, never a copy of the whole cache."""

    def __init__(self, shapes: ModelShapes, rows: int, capacity: int, dtype=np.float32):
        # [layers, 2 (K, V), rows, heads, capacity, head_dim]
        self.array = np.zeros((shapes.num_layers, 2, rows, shapes.num_heads, capacity, shapes.head_dim), dtype)

    @property
    def capacity(self) -> int:
        return self.array.shape[4]

    def write(self, position: int, new_kv: np.ndarray) -> None:
        self.array[:, :, :, :, position] = new_kv


def step_kv_names(num_layers: int) -> tuple[str, ...]:
    """The decoder-step graph's per-layer K/V inputs, in graph order: past_key_0,
    past_value_0, ..., past_key_{L-1}, past_value_{L-1} [rows, heads, capacity, head_dim],
    then cross_key_0, cross_value_0, ... [rows, heads, T, head_dim]. That is the memory
    order of KVCache.array [layers, 2, ...] and of cross K/V [layers, ...]: each input is
    one contiguous block of a runtime buffer. Plain identifiers (valid as ONNX, ONNX
    Runtime, TensorRT and Python names)."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    cross = [f"cross_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return tuple(past + cross)


def step_kv_views(kv_cache: np.ndarray, cross_k: np.ndarray, cross_v: np.ndarray) -> dict[str, np.ndarray]:
    """The per-layer step inputs as views of the runtime's buffers (no copy):
    past_key_i = kv_cache[i, 0], past_value_i = kv_cache[i, 1], cross_key_i = cross_k[i],
    cross_value_i = cross_v[i]. Contiguous when the buffers are."""
    layers = kv_cache.shape[0]
    views = [v for i in range(layers) for v in (kv_cache[i, 0], kv_cache[i, 1])]
    views += [v for i in range(layers) for v in (cross_k[i], cross_v[i])]
    return dict(zip(step_kv_names(layers), views))
