"""The engine core: requests join and leave between steps, and every running request's
rows share each backend step (continuous batching). One loop for every backend and every
kind of request; `step()` is three calls: schedule, execute, update.

A request's codes do not depend on which requests share its steps: each row has its own
sampler stream, rows never read each other except a target reading its own request's
source row, and the backends compute a row the same way whatever the other rows
(README, "Batch invariance"; tests/test_batch_invariance.py)."""

from __future__ import annotations

import collections

import numpy as np

from editgen.engine.contract import MIN_ROWS, Backend, SamplingBatch, StepBatch
from editgen.engine.edit.step_inputs import StepEdits
from editgen.engine.requests import Request, State
from editgen.errors import InvalidRequestError


class EngineCore:
    """Owns the backend's slots: `max_rows` rows may run at once (over all requests)."""

    def __init__(self, backend: Backend, *, max_rows: int = 64):
        if max_rows < MIN_ROWS:
            raise InvalidRequestError(f"max_rows is {max_rows}, must be at least {MIN_ROWS}")
        self.backend, self.max_rows = backend, max_rows
        backend.open(max_rows)
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self._free = np.ones(max_rows, dtype=bool)  # slot -> free
        self.steps_run = 0
        # The backend samples where its logits are: it gets the rows' uniforms and returns codes.
        self.samples_on_device = bool(getattr(backend, "samples_on_device", False))

    # -- requests -----------------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        if request.rows > self.max_rows:
            raise InvalidRequestError(f"the request needs {request.rows} rows, this engine runs at most "
                                      f"{self.max_rows} at once: use fewer targets or a larger max_rows")
        if request.state is not State.WAITING or request in self.waiting or request in self.running:
            raise RuntimeError("a request is submitted once")
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Drop a request; its slots are free before the next step."""
        if request in self.waiting:
            self.waiting.remove(request)
        elif request in self.running:
            self._retire(request)
        if not request.done:
            request.state = State.CANCELLED

    @property
    def active_rows(self) -> int:
        return sum(r.rows for r in self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the loop -----------------------------------------------------------------------

    def step(self) -> list[Request]:
        """Admit what fits, run one step of every running request, advance them. Returns
        the requests that ended in this call (finished or failed)."""
        ended = self._schedule()
        if not self.running:
            return ended
        batch, spans = self._batch()
        try:
            out = self.backend.step(batch)
            if (batch.sampling is None) != (out.codes is None):  # the uniforms were drawn for this step
                raise RuntimeError(f"backend {self.backend.name!r} returned "
                                   f"{'logits' if out.codes is None else 'codes'} against its samples_on_device")
        except Exception as exc:  # fails the requests of this step only; the engine goes on
            for request in list(self.running):
                self._fail(request, exc)
                ended.append(request)
            return ended
        self.steps_run += 1
        for request, (row, map_row, code_row) in zip(list(self.running), spans):
            maps = out.cross_attn[:, map_row: map_row + request.rows_cond] if request.wants_maps else None
            try:
                if out.codes is not None:
                    request.advance(maps, codes=out.codes[code_row: code_row + request.rows_cond])
                else:
                    request.advance(maps, logits=out.logits[row: row + request.rows])
            except Exception as exc:  # a hook's error is that request's
                self._fail(request, exc)
            if request.done:
                if request in self.running:
                    self._retire(request)
                ended.append(request)
        return ended

    def run(self, request: Request, progress: bool = False) -> Request:
        """Submit one request and step until it ends; raises its error if it failed."""
        from editgen.engine.progress import progress_bar

        self.submit(request)
        with progress_bar(request.steps, enabled=progress) as bar:
            while not request.done:
                before = request.step
                self.step()
                bar.update(request.step - before)
        if request.state is State.FAILED:
            raise request.error
        return request

    # -- schedule, execute, update --------------------------------------------------------

    def _schedule(self) -> list[Request]:
        """First come, first served: the head of the queue waits until its rows fit."""
        failed = []
        while self.waiting and self.waiting[0].rows <= int(self._free.sum()):
            request = self.waiting.popleft()
            slots = np.flatnonzero(self._free)[: request.rows]  # lowest free slots: few padding rows
            try:
                self._admit(request, slots)
            except Exception as exc:
                self._fail(request, exc)
                failed.append(request)
                continue
            self._free[slots] = False
            request.slots = slots
            request.state = State.RUNNING
            self.running.append(request)
        return failed

    def _admit(self, request: Request, slots: np.ndarray) -> None:
        """The request's text and static edit tensors, into its slots (once)."""
        ids = np.stack([p.ids for p in request.prompts])  # [rows_cond, T]
        mask = np.stack([p.mask for p in request.prompts])
        hidden = self.backend.encode_text(ids, mask)  # [rows_cond, T, text_hidden]
        if request.layout.cfg:  # null conditioning: zero states, zero mask (as transformers)
            hidden = np.concatenate([hidden, np.zeros_like(hidden)])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        self.backend.admit(slots, hidden, mask, request.edits.row_inputs)

    def _batch(self) -> tuple[StepBatch, list[tuple[int, int, int]]]:
        """The running requests' rows, in order: what changes per step only. spans: (first
        row, first map row, first code row) per request."""
        slots, positions, codes, edits, want, spans, sampling = [], [], [], [], [], [], []
        row = map_row = code_row = 0
        books = self.backend.shapes.num_codebooks
        for request in self.running:
            if self.samples_on_device:
                cond, uncond, *rest = request.sampling_inputs(books)
                sampling.append((cond + row, uncond + row, *rest))
            slots.append(request.slots)
            positions.append(np.full(request.rows, request.step, dtype=np.int64))
            codes.append(request.frame())
            edits.append((request.step_edits(), row))
            wants = np.zeros(request.rows, dtype=bool)
            wants[: request.rows_cond] = request.wants_maps
            want.append(wants)
            spans.append((row, map_row, code_row))
            row += request.rows
            map_row += request.rows_cond if request.wants_maps else 0
            code_row += request.rows_cond
        means_only = all(r.map_means_only for r in self.running if r.wants_maps)
        batch = StepBatch(slots=np.concatenate(slots), positions=np.concatenate(positions),
                          codes=np.concatenate(codes), edit=StepEdits.concat(edits), want_maps=np.concatenate(want),
                          map_means_only=means_only,
                          sampling=SamplingBatch(*map(np.concatenate, zip(*sampling))) if sampling else None)
        return batch, spans

    def _retire(self, request: Request) -> None:
        self.running.remove(request)
        self.backend.release(request.slots)
        self._free[request.slots] = True

    def _fail(self, request: Request, exc: BaseException) -> None:
        if request in self.running:
            self._retire(request)
        request.state, request.error = State.FAILED, exc


def run_alone(backend: Backend, request: Request, progress: bool = False) -> Request:
    """One request on an engine core of its own, sized to it: what `generate`, `edit`,
    `capture_source` and the CLI run. Raises the request's error if it failed."""
    return EngineCore(backend, max_rows=max(request.rows, MIN_ROWS)).run(request, progress=progress)
