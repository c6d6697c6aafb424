"""The int8 self-attention K/V pool of the CPU int8 step (host memory, numpy).

Same slots, growth and shrinking as HostKVPool; the self-attention cache is int8 with one
float32 scale per (position, slot, head), in blocks of 16 positions, block-major (the
layout editgen.kernels.cpu_attention reads in one sweep; the kernel's header says why):

    k8      int8    [layers, positions / 16, slots, heads, head_dim, 16]
    v8      int8    [layers, positions / 16, slots, heads, 16, head_dim]
    kscale  float32 [layers, positions / 16, slots, heads, 16]
    vscale  float32 [layers, positions / 16, slots, heads, 16]

A row and position costs layers x heads x (2 x head_dim + 8) bytes instead of layers x
heads x 2 x head_dim x 4 (random:small: 52 KB instead of 196 KB). The kernel writes each
step's K/V itself; cross K/V stay float32 as in HostKVPool.
"""

from __future__ import annotations

import numpy as np

from editgen.engine.backends.slots import HostKVPool
from editgen.engine.config import ModelShapes
from editgen.kernels.cpu_attention import BLOCK, HEAD_DIMS


class Int8KVPool(HostKVPool):
    def __init__(self, shapes: ModelShapes):
        if shapes.head_dim not in HEAD_DIMS:
            raise ValueError(f"the int8 KV kernel takes head_dim {HEAD_DIMS}, this model has {shapes.head_dim}")
        self.k8, self.v8, self.kscale, self.vscale = self._empty(shapes, 0, 0)
        super().__init__(shapes, np.float32)

    @staticmethod
    def _empty(s: ModelShapes, slots: int, positions: int):
        assert positions % BLOCK == 0, positions
        lead = (s.num_layers, positions // BLOCK, slots, s.num_heads)
        return (np.zeros(lead + (s.head_dim, BLOCK), np.int8), np.zeros(lead + (BLOCK, s.head_dim), np.int8),
                np.zeros(lead + (BLOCK,), np.float32), np.zeros(lead + (BLOCK,), np.float32))

    @property
    def slot_capacity(self) -> int:
        return self.v8.shape[2]

    @property
    def positions(self) -> int:
        return self.v8.shape[1] * BLOCK

    def _empty_kv(self, slots: int, positions: int) -> np.ndarray:
        return np.zeros((0,), np.int8)  # HostKVPool's float array is not used

    def _resize_kv(self, slots: int, positions: int) -> None:
        new = self._empty(self.shapes, slots, positions)
        s, b = min(self.slot_capacity, slots), min(self.positions, positions) // BLOCK
        for dst, src in zip(new, (self.k8, self.v8, self.kscale, self.vscale)):
            dst[:, :b, :s] = src[:, :b, :s]
        self.k8, self.v8, self.kscale, self.vscale = new

    def write(self, slots, positions, new_kv) -> None:
        raise AssertionError("the int8 KV kernel writes each step's K/V itself")
