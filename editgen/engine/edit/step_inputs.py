"""The edit tensors of the decoder step (docs/design.md, "Step graph"), split by lifetime.

Most are fixed for a request's whole life (mapper, alphas, weights, blends, which row is
the source): a backend writes them into its slots once, at admission (EditBatch.row_inputs).
Three change with the step (the word windows w_t, the self-injection window and captured
source maps): StepEdits carries only those (EditBatch.step_edits).

Rows follow the request's RowLayout: the source row, the unconditional rows and plain
generation rows get identity inputs, which reproduce a row's own maps bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.edit.plan import EditPlan
from editgen.engine.edit.settings import cross_window_steps, self_window_steps
from editgen.engine.rows import RowLayout
from editgen.errors import InvalidRequestError


def _static():
    return dataclasses.field(metadata={"per_step": False})


def _per_step():
    return dataclasses.field(metadata={"per_step": True})


@dataclasses.dataclass(frozen=True, eq=False)
class EditStepInputs:
    """Every edit input of the step graph, for `rows` rows, in the graph's order."""

    src_row: np.ndarray = _static()  # int64 [rows] row whose maps are the source (self = unedited)
    mapper: np.ndarray = _static()  # float32 [rows, T, T] [source token, target token]
    alpha: np.ndarray = _static()  # float32 [rows, T] 1 = from source via mapper, 0 = own map
    weight: np.ndarray = _static()  # float32 [rows, T] reweight c (1 = unchanged)
    window: np.ndarray = _per_step()  # float32 [rows, T] w_t at this step (0/1)
    blend: np.ndarray = _static()  # float32 [rows, layers] cross a_i (1 = keep own map)
    use_captured: np.ndarray = _static()  # float32 [rows] 1: source maps come from `captured`
    captured: np.ndarray = _per_step()  # float32 [layers, rows, heads, T] injected source maps
    # Self-attention injection: S = S_own - self_window * self_blend[i] * (S_own - S_src),
    # S_src the self-attention probabilities of row src_row at the same positions.
    self_blend: np.ndarray = _static()  # float32 [rows, layers] b_i (0 = own self-attention)
    self_window: np.ndarray = _per_step()  # float32 [rows] 1 while self-injection is on at this step

    @classmethod
    def identity(cls, rows: int, T: int, num_layers: int, num_heads: int) -> "EditStepInputs":
        return cls(
            src_row=np.arange(rows, dtype=np.int64),
            mapper=np.tile(np.eye(T, dtype=np.float32), (rows, 1, 1)),
            alpha=np.ones((rows, T), dtype=np.float32),
            weight=np.ones((rows, T), dtype=np.float32),
            window=np.zeros((rows, T), dtype=np.float32),
            blend=np.ones((rows, num_layers), dtype=np.float32),
            use_captured=np.zeros(rows, dtype=np.float32),
            captured=np.zeros((num_layers, rows, num_heads, T), dtype=np.float32),
            self_blend=np.zeros((rows, num_layers), dtype=np.float32),
            self_window=np.zeros(rows, dtype=np.float32),
        )

    def as_feed(self) -> dict[str, np.ndarray]:
        """Arrays under the step graph's input names (edit_src_row, ...)."""
        return {f"edit_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}

    def row(self, name: str, rows) -> np.ndarray:
        """Field `name` at `rows` (the rows axis is axis 1 of `captured`)."""
        value = getattr(self, name)
        return value[:, rows] if name == "captured" else value[rows]


# Written once per request at admission; the others come with every step (StepEdits).
STATIC_FIELDS = tuple(f.name for f in dataclasses.fields(EditStepInputs) if not f.metadata["per_step"])


@dataclasses.dataclass(frozen=True, eq=False)
class StepEdits:
    """What of the edit changes at a step, for R rows (a request's, or a whole StepBatch's)."""

    window: np.ndarray  # float32 [R, T] w_t per token
    self_window: np.ndarray  # float32 [R]
    captured_rows: np.ndarray  # int64 [C] rows whose source maps are captured
    captured: np.ndarray  # float32 [layers, C, heads, T] their source maps at this step

    @classmethod
    def identity(cls, rows: int, T: int, num_layers: int, num_heads: int) -> "StepEdits":
        """No window on, nothing captured."""
        return cls(np.zeros((rows, T), np.float32), np.zeros(rows, np.float32), np.zeros(0, np.int64),
                   np.zeros((num_layers, 0, num_heads, T), np.float32))

    @classmethod
    def concat(cls, parts: Sequence[tuple["StepEdits", int]]) -> "StepEdits":
        """The StepEdits of several requests, each with the batch row of its first row."""
        return cls(np.concatenate([p.window for p, _ in parts]), np.concatenate([p.self_window for p, _ in parts]),
                   np.concatenate([p.captured_rows + first for p, first in parts]),
                   np.concatenate([p.captured for p, _ in parts], axis=1))


class EditBatch:
    """The edit tensors of one request, laid out by its RowLayout.

    Paired mode: rows [source, target_1..n]. captured_maps: float32 [steps, layers, heads, T],
    the source's maps recorded earlier (captured mode): then the source is not run at all,
    the conditional rows are the targets only, and they read their source maps from
    `captured` (use_captured = 1).
    """

    def __init__(self, plans: Sequence[EditPlan], *, cfg: bool, num_heads: int,
                 captured_maps: np.ndarray | None = None):
        if not plans:
            raise InvalidRequestError("an edit needs at least one target prompt")
        first = plans[0]
        for plan in plans[1:]:
            if not np.array_equal(plan.source.ids, first.source.ids):
                raise InvalidRequestError(
                    f"all targets must edit one source: {first.source.text!r} and "
                    f"{plan.source.text!r} differ; run them as separate requests")
            assert plan.mapper.shape == first.mapper.shape
            assert plan.num_layers == first.num_layers
        T, layers = first.mapper.shape[0], first.num_layers
        layout = RowLayout.edit(len(plans), cfg=cfg, with_source=captured_maps is None)
        self._setup(layout, T, layers, num_heads)
        self.plans = tuple(plans)
        static, targets = self.row_inputs, np.asarray(layout.targets, dtype=np.int64)
        for r, plan in zip(targets, plans):
            for name, value in plan.row_inputs().items():
                getattr(static, name)[r] = value
        if layout.source is not None:
            static.src_row[targets] = layout.source
        self._targets = targets
        # Targets are consecutive rows: views, so a step writes its windows without copies.
        assert np.array_equal(targets, np.arange(targets[0], targets[0] + targets.size)), targets
        self._target_windows = self._window[targets[0]: targets[0] + targets.size]  # view [n, T]
        self._target_self_windows = self._self_window[targets[0]: targets[0] + targets.size]  # view [n]
        self._bounds = np.stack([p.window_bounds for p in plans])  # float64 [n, T, 2]
        self._self_bounds = np.stack([p.self_window for p in plans])  # float64 [n, 2]
        self._steps_for = None  # num_steps the window steps below were computed for
        self._captured_maps = None
        if captured_maps is not None:
            want = (layers, num_heads, T)
            if captured_maps.ndim != 4 or tuple(captured_maps.shape[1:]) != want:
                raise InvalidRequestError(
                    f"captured maps have shape {tuple(captured_maps.shape)}, this model needs "
                    f"[steps, {layers}, {num_heads}, {T}]: capture them with the same model")
            self._captured_maps = np.ascontiguousarray(captured_maps, dtype=np.float32)
            static.use_captured[targets] = 1.0

    @classmethod
    def plain(cls, rows_cond: int, *, cfg: bool, shapes: ModelShapes | None = None,
              T: int | None = None, num_layers: int | None = None, num_heads: int | None = None,
              names: Sequence[str] | None = None) -> "EditBatch":
        """No edit: every row identity (plain generation of rows_cond prompts, rows named
        `names` or prompt_1..prompt_n). Sizes come from `shapes`, or from T, num_layers and
        num_heads."""
        if shapes is not None:
            T, num_layers, num_heads = shapes.max_text_tokens, shapes.num_layers, shapes.num_heads
        if T is None or num_layers is None or num_heads is None:
            raise TypeError("EditBatch.plain needs shapes=, or T=, num_layers= and num_heads=")
        self = cls.__new__(cls)
        layout = RowLayout(tuple(names), cfg) if names is not None else RowLayout.generation(rows_cond, cfg=cfg)
        if layout.rows_cond != rows_cond:
            raise ValueError(f"{rows_cond} rows, {len(layout.names)} names")
        self._setup(layout, T, num_layers, num_heads)
        self.plans = ()
        self._targets = np.zeros(0, dtype=np.int64)
        self._captured_maps = None
        return self

    def _setup(self, layout: RowLayout, T: int, num_layers: int, num_heads: int):
        self.layout = layout
        self.rows = layout.rows
        # Static rows (src_row relative to the request's first row); the per-step fields
        # hold their identity values, which is what a row starts with.
        self.row_inputs = EditStepInputs.identity(layout.rows, T, num_layers, num_heads)
        self._window = np.zeros((layout.rows, T), dtype=np.float32)
        self._self_window = np.zeros(layout.rows, dtype=np.float32)
        self._no_captured = (np.zeros(0, np.int64), np.zeros((num_layers, 0, num_heads, T), np.float32))

    @property
    def captured(self) -> bool:
        return self._captured_maps is not None

    def step_edits(self, step: int, num_steps: int) -> StepEdits:
        """What changes at `step` (0-based) of `num_steps`. Fills buffers in place and
        returns views of them: use it before asking for the next step."""
        assert 0 <= step < num_steps, (step, num_steps)
        rows, maps = self._no_captured
        if self.plans:
            if self._steps_for != num_steps:
                self._cross_steps = cross_window_steps(self._bounds, num_steps)  # int64 [n, T, 2]
                self._self_steps = self_window_steps(self._self_bounds, num_steps)  # int64 [n, 2]
                self._steps_for = num_steps
            lo, hi = self._cross_steps[..., 0], self._cross_steps[..., 1]
            np.copyto(self._target_windows, (lo <= step) & (step < hi))
            lo, hi = self._self_steps[:, 0], self._self_steps[:, 1]
            np.copyto(self._target_self_windows, (lo <= step) & (step < hi))
        if self._captured_maps is not None:
            if num_steps > self._captured_maps.shape[0]:
                raise InvalidRequestError(
                    f"captured maps cover {self._captured_maps.shape[0]} steps, this request "
                    f"takes {num_steps}: capture the source with the same duration")
            rows = self._targets  # [n], every target reads the same source maps
            source = self._captured_maps[step]  # [layers, heads, T]
            maps = np.broadcast_to(source[:, None], (source.shape[0], rows.size) + source.shape[1:])
        return StepEdits(self._window, self._self_window, rows, maps)

    def inputs(self, step: int, num_steps: int) -> EditStepInputs:
        """Every edit input of this request's rows at `step` (static and per step, in a new
        object): what a backend's slots hold for these rows at that step."""
        edits = self.step_edits(step, num_steps)
        fields = {name: getattr(self.row_inputs, name).copy() for name in STATIC_FIELDS}
        captured = np.zeros_like(self.row_inputs.captured)
        captured[:, edits.captured_rows] = edits.captured
        return EditStepInputs(**fields, window=edits.window.copy(), self_window=edits.self_window.copy(),
                              captured=captured)
