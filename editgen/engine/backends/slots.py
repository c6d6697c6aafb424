"""What every backend does the same way around its step: which slots are admitted, the
persistent slot-indexed edit tensors, and how a StepBatch becomes the rows the step runs.

The edit tensors live in buffers indexed by slot (vLLM's InputBatch): a request's static
ones (mapper, alphas, weights, blends, its source's slot) are written at admission and
reset to identity at release; a step writes only what changes (windows, captured maps)
at its rows' slots.

A step runs the pool's slots 0..n-1 as its rows (n = the highest slot of the batch + 1,
at least MIN_ROWS), so that every K/V input is a contiguous prefix of the pool and can be
bound in place. Slots in that range that are not in the batch are free (the engine core
steps every admitted request every step) and run as padding rows: pad codes, position
0, identity edit; their outputs are dropped and their K/V not written. The scheduler hands
out the lowest free slots, so padding rows are rare.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.contract import MIN_ROWS, StepBatch, attended_positions
from editgen.engine.edit.step_inputs import STATIC_FIELDS, EditStepInputs
from editgen.errors import InvalidRequestError


@dataclasses.dataclass
class PhysicalStep:
    """A StepBatch laid out on rows 0..n-1 (views of SlotTable buffers)."""

    rows: int  # n
    codes: np.ndarray  # int64 [n, K]
    positions: np.ndarray  # int64 [n]
    text_mask: np.ndarray  # int64 [n, T]
    edit: EditStepInputs  # rows n; src_row indexes rows 0..n-1 (= slots)
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
        # The persistent edit batch, by slot; src_row holds slots. `captured` is not used
        # from it: a prefix of its rows is not contiguous, so `_captured` keeps one buffer
        # per row count (a step's inputs are bound by pointer, and stay put).
        self.edit = EditStepInputs.identity(max_slots, T, L, H)
        self._captured: dict[int, np.ndarray] = {}
        self._codes = np.full((max_slots, K), shapes.pad_token_id, dtype=np.int64)
        self._positions = np.zeros(max_slots, dtype=np.int64)

    def admit(self, slots: np.ndarray, mask: np.ndarray, edit: EditStepInputs) -> None:
        """Rows `slots` join with their text mask [R, T] and static edit tensors (rows R,
        src_row indexing these rows)."""
        slots = self._check(slots)
        if self.admitted[slots].any():
            raise RuntimeError(f"slots {slots[self.admitted[slots]].tolist()} are already admitted")
        if not (0 <= edit.src_row.min() and edit.src_row.max() < slots.size):
            raise RuntimeError(f"src_row {edit.src_row.tolist()} outside the {slots.size} admitted rows")
        self.admitted[slots] = True
        self.text_mask[slots] = mask
        self.length[slots] = 0
        self._reset(slots)
        for name in STATIC_FIELDS:
            getattr(self.edit, name)[slots] = getattr(edit, name)
        self.edit.src_row[slots] = slots[edit.src_row]

    def release(self, slots: np.ndarray) -> None:
        slots = self._check(slots)
        self.admitted[slots] = False
        self.text_mask[slots] = 0
        self.length[slots] = 0
        self._reset(slots)

    def _reset(self, slots: np.ndarray) -> None:
        """Identity edit tensors at `slots` (a free slot runs as an unedited padding row)."""
        for f in dataclasses.fields(EditStepInputs):
            if f.name != "captured":
                getattr(self.edit, f.name)[slots] = getattr(self._identity, f.name)[slots]

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
        """The step on rows 0..n-1: this step's windows written at the batch's slots, every
        other edit tensor as admitted; codes and positions of the batch rows, pads elsewhere."""
        slots = self.check_step(batch)
        n = max(int(slots.max()) + 1, MIN_ROWS)
        codes, positions = self._codes[:n], self._positions[:n]
        codes.fill(self.shapes.pad_token_id)
        positions.fill(0)
        codes[slots] = batch.codes
        positions[slots] = batch.positions
        captured = self._captured.get(n)
        if captured is None:
            s = self.shapes
            captured = self._captured[n] = np.zeros((s.num_layers, n, s.num_heads, s.max_text_tokens), np.float32)
        self._write_step(slots, batch)
        captured[:, slots[batch.edit.captured_rows]] = batch.edit.captured
        fields = {f.name: getattr(self.edit, f.name)[:n] for f in dataclasses.fields(EditStepInputs)}
        edit = EditStepInputs(**{**fields, "captured": captured})
        attended = attended_positions(int(batch.positions.max()))
        return PhysicalStep(n, codes, positions, self.text_mask[:n], edit, attended)

    def batch_edit(self, batch: StepBatch) -> EditStepInputs:
        """The edit tensors of the batch's R rows in batch order (src_row indexing batch
        rows), for a backend that runs exactly the batch's rows. A source outside the batch
        is an engine bug (paired rows step together)."""
        slots = self.check_step(batch)
        self._write_step(slots, batch)
        row_of = np.full(self.max_slots, -1, dtype=np.int64)
        row_of[slots] = np.arange(slots.size)
        src_row = row_of[self.edit.src_row[slots]]
        if (src_row < 0).any():
            raise RuntimeError(f"rows {np.flatnonzero(src_row < 0).tolist()} read a source row outside the step")
        fields = {f.name: getattr(self.edit, f.name)[slots] for f in dataclasses.fields(EditStepInputs)
                  if f.name not in ("src_row", "captured")}
        s = self.shapes
        captured = np.zeros((s.num_layers, slots.size, s.num_heads, s.max_text_tokens), np.float32)
        captured[:, batch.edit.captured_rows] = batch.edit.captured
        return EditStepInputs(**fields, src_row=src_row, captured=captured)

    def _write_step(self, slots: np.ndarray, batch: StepBatch) -> None:
        self.edit.window[slots] = batch.edit.window
        self.edit.self_window[slots] = batch.edit.self_window

    def written(self, batch: StepBatch) -> None:
        self.length[batch.slots] = batch.positions + 1

    def _check(self, slots) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        if slots.ndim != 1 or slots.size == 0 or slots.min() < 0 or slots.max() >= self.max_slots:
            raise RuntimeError(f"slots {slots.tolist()} outside 0..{self.max_slots - 1}")
        if np.unique(slots).size != slots.size:
            raise RuntimeError(f"slots {slots.tolist()} repeat")
        return slots


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
