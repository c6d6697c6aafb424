"""Per-step edit tensors fed to the decoder step (docs/design.md, "Step contract").

Row layout: conditional rows [source, target_1..target_n] (rows_cond = 1 + n), then, with
CFG, the same rows unconditional (rows = 2 * rows_cond). The source row and every
unconditional row get identity inputs, which reproduce the row's own maps bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.edit.plan import EditPlan
from editgen.engine.edit.settings import cross_window_steps, self_window_steps
from editgen.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True, eq=False)
class EditStepInputs:
    src_row: np.ndarray  # int64 [rows] row whose maps are the source (self = unedited)
    mapper: np.ndarray  # float32 [rows, T, T] [source token, target token]
    alpha: np.ndarray  # float32 [rows, T] 1 = from source via mapper, 0 = own map
    weight: np.ndarray  # float32 [rows, T] reweight c (1 = unchanged)
    window: np.ndarray  # float32 [rows, T] w_t at this step (0/1)
    blend: np.ndarray  # float32 [rows, layers] cross a_i (1 = keep own map)
    use_captured: np.ndarray  # float32 [rows] 1: source maps come from `captured`
    captured: np.ndarray  # float32 [layers, rows, heads, T] injected source maps
    # Self-attention injection: S = S_own - self_window * self_blend[i] * (S_own - S_src),
    # S_src the self-attention probabilities of row src_row at the same positions.
    self_blend: np.ndarray  # float32 [rows, layers] b_i (0 = own self-attention)
    self_window: np.ndarray  # float32 [rows] 1 while self-injection is on at this step

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


class EditBatch:
    """Edit tensors for one request; `inputs(step, num_steps)` refills the same buffers.

    captured_maps: float32 [steps, layers, heads, T], the source's maps recorded earlier
    (captured mode). Then the source is not run at all: the conditional rows are the
    targets only, and they read their source maps from `captured` (use_captured = 1).
    `first_target` is the row of the first target: 1 in paired mode, 0 in captured mode.
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
        n = len(plans)
        t0 = self.first_target = 0 if captured_maps is not None else 1
        self._setup(t0 + n, cfg, T, layers, num_heads)
        self.plans = tuple(plans)
        buf = self._buf
        # Static per-request parts, written once; only window/captured change per step.
        if t0:
            buf.src_row[1:1 + n] = 0
        for r, plan in enumerate(plans, start=t0):
            buf.mapper[r] = plan.mapper
            buf.alpha[r] = plan.alphas
            buf.weight[r] = plan.weights
            buf.blend[r] = plan.cross_blend
            buf.self_blend[r] = plan.self_blend
        self._bounds = np.stack([p.window_bounds for p in plans])  # float64 [n, T, 2]
        self._self_bounds = np.stack([p.self_window for p in plans])  # float64 [n, 2]
        self._steps_for = None  # num_steps the window steps below were computed for
        self._window_targets = buf.window[t0:t0 + n]  # view [n, T]
        self._self_window_targets = buf.self_window[t0:t0 + n]  # view [n]
        self._captured_maps = None
        if captured_maps is not None:
            want = (layers, num_heads, T)
            if captured_maps.ndim != 4 or tuple(captured_maps.shape[1:]) != want:
                raise InvalidRequestError(
                    f"captured maps have shape {tuple(captured_maps.shape)}, this model needs "
                    f"[steps, {layers}, {num_heads}, {T}]: capture them with the same model")
            self._captured_maps = np.ascontiguousarray(captured_maps, dtype=np.float32)
            buf.use_captured[:n] = 1.0
            self._captured_targets = buf.captured[:, :n]  # view [layers, n, heads, T]

    @classmethod
    def plain(cls, rows_cond: int, *, cfg: bool, shapes: ModelShapes | None = None,
              T: int | None = None, num_layers: int | None = None,
              num_heads: int | None = None) -> "EditBatch":
        """No edit: every row identity (plain generation of rows_cond prompts).
        Sizes come from `shapes`, or from T, num_layers and num_heads."""
        if shapes is not None:
            T, num_layers, num_heads = shapes.max_text_tokens, shapes.num_layers, shapes.num_heads
        if T is None or num_layers is None or num_heads is None:
            raise TypeError("EditBatch.plain needs shapes=, or T=, num_layers= and num_heads=")
        self = cls.__new__(cls)
        self._setup(rows_cond, cfg, T, num_layers, num_heads)
        self.plans = ()
        self._captured_maps = None
        self.first_target = rows_cond
        return self

    def _setup(self, rows_cond: int, cfg: bool, T: int, num_layers: int, num_heads: int):
        self.rows_cond = rows_cond
        self.cfg = cfg
        self.rows = 2 * rows_cond if cfg else rows_cond
        self._buf = EditStepInputs.identity(self.rows, T, num_layers, num_heads)

    @property
    def captured(self) -> bool:
        return self._captured_maps is not None

    def inputs(self, step: int, num_steps: int) -> EditStepInputs:
        """The edit tensors of `step` (0-based). Fills preallocated buffers in place and
        returns the same object every step: use it before asking for the next step."""
        assert 0 <= step < num_steps, (step, num_steps)
        if not self.plans:
            return self._buf
        if self._steps_for != num_steps:
            self._cross_steps = cross_window_steps(self._bounds, num_steps)  # int64 [n, T, 2]
            self._self_steps = self_window_steps(self._self_bounds, num_steps)  # int64 [n, 2]
            self._steps_for = num_steps
        lo, hi = self._cross_steps[..., 0], self._cross_steps[..., 1]
        np.copyto(self._window_targets, (lo <= step) & (step < hi))
        lo, hi = self._self_steps[:, 0], self._self_steps[:, 1]
        np.copyto(self._self_window_targets, (lo <= step) & (step < hi))
        if self._captured_maps is not None:
            if num_steps > self._captured_maps.shape[0]:
                raise InvalidRequestError(
                    f"captured maps cover {self._captured_maps.shape[0]} steps, this request "
                    f"takes {num_steps}: capture the source with the same duration")
            # [layers, heads, T] -> every target row: [layers, n, heads, T]
            np.copyto(self._captured_targets, self._captured_maps[step][:, None])
        return self._buf
