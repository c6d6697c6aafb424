"""What every backend does the same way around its step: which slots are admitted, and
how a StepBatch becomes the rows the step runs.

A step runs the pool's slots 0..n-1 as its rows (n = the highest slot of the batch + 1,
at least MIN_ROWS), so that every K/V input is a contiguous prefix of the pool and can be
bound in place. Slots in that range that are not in the batch (free, or admitted and not
stepped) run as padding rows: pad codes, position 0, identity edit, and their outputs
are dropped and their K/V not written. The scheduler hands out the lowest free slots, so
padding rows are rare.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.contract import StepBatch, attended_positions
from editgen.engine.edit.step_inputs import EditStepInputs
from editgen.errors import InvalidRequestError

# torch's matmul (and ONNX Runtime's MatMulNBits, the earlier int8 method) take another
# kernel for one row, with other rounding: a step never runs fewer rows, so a row's
# numbers do not depend on whether it runs alone (tests/test_batch_invariance.py).
MIN_ROWS = 2


@dataclasses.dataclass
class PhysicalStep:
    """A StepBatch laid out on rows 0..n-1 (views of SlotTable buffers)."""

    rows: int  # n
    codes: np.ndarray  # int64 [n, K]
    positions: np.ndarray  # int64 [n]
    text_mask: np.ndarray  # int64 [n, T]
    edit: EditStepInputs  # rows n; src_row indexes rows 0..n-1
    attended: int  # cache positions the step reads (multiple of POSITION_BUCKET)


class SlotTable:
    def __init__(self, shapes: ModelShapes, max_slots: int):
        if max_slots < MIN_ROWS:
            raise InvalidRequestError(f"max_slots is {max_slots}, a backend needs at least {MIN_ROWS}")
        self.shapes, self.max_slots = shapes, max_slots
        T, L, H, K = shapes.max_text_tokens, shapes.num_layers, shapes.num_heads, shapes.num_codebooks
        self.admitted = np.zeros(max_slots, dtype=bool)
        self.text_mask = np.zeros((max_slots, T), dtype=np.int64)
        self.length = np.zeros(max_slots, dtype=np.int64)  # positions written per slot
        self._identity = EditStepInputs.identity(max_slots, T, L, H)
        self._edit = EditStepInputs.identity(max_slots, T, L, H)  # working buffers
        # captured [layers, rows, heads, T]: a prefix of rows is not contiguous, so one
        # buffer per row count (a step's inputs are bound by pointer, and stay put).
        self._captured: dict[int, np.ndarray] = {}
        self._codes = np.full((max_slots, K), shapes.pad_token_id, dtype=np.int64)
        self._positions = np.zeros(max_slots, dtype=np.int64)

    def admit(self, slots: np.ndarray, mask: np.ndarray) -> None:
        slots = self._check(slots)
        if self.admitted[slots].any():
            raise RuntimeError(f"slots {slots[self.admitted[slots]].tolist()} are already admitted")
        self.admitted[slots] = True
        self.text_mask[slots] = mask
        self.length[slots] = 0

    def release(self, slots: np.ndarray) -> None:
        slots = self._check(slots)
        self.admitted[slots] = False
        self.text_mask[slots] = 0
        self.length[slots] = 0

    def needed_positions(self) -> int:
        """Positions every admitted slot's cache must keep (its written length)."""
        return int(self.length[self.admitted].max(initial=0))

    def check_step(self, batch: StepBatch) -> np.ndarray:
        """The batch's slots (int64 [R]): distinct, in range, admitted, each row at the
        position its slot has written up to. RuntimeError otherwise (an engine bug: a wrong
        slot or position would read or write another row's cache)."""
        slots = self._check(batch.slots)
        if not self.admitted[slots].all():
            raise RuntimeError(f"step on slots that were not admitted: {slots[~self.admitted[slots]].tolist()}")
        if not np.array_equal(batch.positions, self.length[slots]):
            raise RuntimeError("a row's position must equal the positions its slot has written "
                               f"(got {batch.positions.tolist()}, written {self.length[slots].tolist()})")
        return slots

    def expand(self, batch: StepBatch) -> PhysicalStep:
        slots = self.check_step(batch)
        n = max(int(slots.max()) + 1, MIN_ROWS)
        codes, positions = self._codes[:n], self._positions[:n]
        codes.fill(self.shapes.pad_token_id)
        positions.fill(0)
        codes[slots] = batch.codes
        positions[slots] = batch.positions
        if n not in self._captured:
            s = self.shapes
            self._captured[n] = np.zeros((s.num_layers, n, s.num_heads, s.max_text_tokens), np.float32)
        edit = EditStepInputs(**{f.name: self._captured[n] if f.name == "captured" else getattr(self._edit, f.name)[:n]
                                 for f in dataclasses.fields(EditStepInputs)})
        for f in dataclasses.fields(EditStepInputs):
            np.copyto(getattr(edit, f.name), _rows(getattr(self._identity, f.name), f.name, n))
        src = batch.edit
        edit.src_row[slots] = slots[src.src_row]
        for name in ("mapper", "alpha", "weight", "window", "blend", "use_captured", "self_blend", "self_window"):
            getattr(edit, name)[slots] = getattr(src, name)
        edit.captured[:, slots] = src.captured
        attended = attended_positions(int(batch.positions.max()))
        return PhysicalStep(n, codes, positions, self.text_mask[:n], edit, attended)

    def written(self, batch: StepBatch) -> None:
        self.length[batch.slots] = batch.positions + 1

    def _check(self, slots) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        if slots.ndim != 1 or slots.size == 0 or slots.min() < 0 or slots.max() >= self.max_slots:
            raise RuntimeError(f"slots {slots.tolist()} outside 0..{self.max_slots - 1}")
        if np.unique(slots).size != slots.size:
            raise RuntimeError(f"slots {slots.tolist()} repeat")
        return slots


def _rows(array: np.ndarray, name: str, n: int) -> np.ndarray:
    """The first n rows of an EditStepInputs buffer (rows are axis 1 of `captured`)."""
    return array[:, :n] if name == "captured" else array[:n]


class HostKVPool:
    """The self-attention and cross K/V pools in host memory (numpy), for ONNX Runtime on CPU.

    kv: [layers, 2, slot_capacity, heads, positions, head_dim]. `positions` follows the
    longest admitted row: the pool is re-strided (a new array, live prefix copied) when a
    step needs more, with 1/8 headroom, and when every live row fits in half of it. Each
    re-stride copies O(cache) once; every step in between reads exactly `positions`.
    cross_k, cross_v: [layers, slot_capacity, heads, T, head_dim]."""

    def __init__(self, shapes: ModelShapes, dtype=np.float32):
        self.shapes, self.dtype = shapes, np.dtype(dtype)
        self.kv = self._empty_kv(0, 0)
        s = shapes
        self.cross_k = np.zeros((s.num_layers, 0, s.num_heads, s.max_text_tokens, s.head_dim), self.dtype)
        self.cross_v = self.cross_k.copy()
        self.restrides = 0  # pool re-allocations so far (benchmarks report it)

    @property
    def slot_capacity(self) -> int:
        return self.kv.shape[2]

    @property
    def positions(self) -> int:
        return self.kv.shape[4]

    def _empty_kv(self, slots: int, positions: int) -> np.ndarray:
        s = self.shapes
        return np.zeros((s.num_layers, 2, slots, s.num_heads, positions, s.head_dim), self.dtype)

    def ensure(self, slots: int, attended: int, live_positions: int) -> None:
        """Room for slots 0..slots-1 and `attended` positions; shrink when `live_positions`
        (the longest admitted row) fits in half the pool."""
        grow_slots = slots > self.slot_capacity
        grow_positions = attended > self.positions
        shrink = self.positions >= 2 * max(attended, 1) and live_positions <= self.positions // 2
        if not (grow_slots or grow_positions or shrink):
            return
        new_slots = max(self.slot_capacity, _round_up(slots, 4)) if grow_slots else self.slot_capacity
        if grow_positions:
            new_positions = attended_positions(attended + attended // 8 - 1)
        elif shrink:
            new_positions = max(attended, attended_positions(max(live_positions - 1, 0)))
        else:
            new_positions = self.positions
        self._resize_kv(new_slots, new_positions)
        if new_slots != self.cross_k.shape[1]:
            for name in ("cross_k", "cross_v"):
                old = getattr(self, name)
                new = np.zeros(old.shape[:1] + (new_slots,) + old.shape[2:], old.dtype)
                new[:, : old.shape[1]] = old
                setattr(self, name, new)
        self.restrides += 1

    def _resize_kv(self, slots: int, positions: int) -> None:
        """New self-attention arrays of `slots` x `positions`, the live prefix copied."""
        kv = self._empty_kv(slots, positions)
        keep_slots, keep_positions = min(self.slot_capacity, slots), min(self.positions, positions)
        kv[:, :, :keep_slots, :, :keep_positions] = self.kv[:, :, :keep_slots, :, :keep_positions]
        self.kv = kv

    def write(self, slots: np.ndarray, positions: np.ndarray, new_kv: np.ndarray) -> None:
        """new_kv: [layers, 2, n, heads, head_dim] for rows 0..n-1; writes rows `slots` at
        their `positions` (O(new) bytes)."""
        # One basic-indexed copy per row: 5x faster than one advanced-indexed assignment here.
        for slot, position in zip(slots.tolist(), positions.tolist()):
            self.kv[:, :, slot, :, position] = new_kv[:, :, slot]


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
