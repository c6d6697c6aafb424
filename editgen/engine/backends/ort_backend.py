"""ONNX Runtime backend: runs an `editgen export` directory with onnxruntime and numpy
only (no torch). CUDAExecutionProvider when onnxruntime has it, else CPU.

Backend contract v3 (editgen.engine.contract): the backend owns the slot pool in host
memory (editgen.engine.backends.slots.HostKVPool). The decoder step runs rows 0..n-1 of
the pool through one IOBinding:
- every per-layer K/V input (past_key_i, past_value_i, cross_key_i, cross_value_i) is
  bound by pointer to its contiguous block of the pool (`kv[i, 0, :n]`, ...): nothing is
  copied, in the runtime or in the graph, and the graph reads `positions` = the pool's
  current length, a multiple of POSITION_BUCKET that follows the longest live row;
- the graph returns this position's K/V (`new_kv`) and the backend writes the batch's
  rows at (slot, position) right after the run (O(new) bytes);
- small inputs (codes, positions, text mask, edit tensors) live in SlotTable buffers and
  outputs in buffers kept per row count: in steady state a step binds nothing.

On CUDA the bound host buffers are copied to and from the device by onnxruntime on every
run (correct, not the fast path: a device-resident pool needs the device-side write of
the CUDA engine).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from editgen.engine.backends.ort_sessions import OrtSessions
from editgen.engine.backends.slots import HostKVPool, SlotTable
from editgen.engine.contract import STEP_EDIT_INPUTS, StepBatch, StepOutputs, step_kv_names
from editgen.errors import ExportDirError


@dataclasses.dataclass
class _Binding:
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


class OrtBackend:
    """Backend protocol (editgen.engine.contract) over an exported directory: its standard
    decoder step.

    `providers`: onnxruntime execution providers (default: CUDA if present, then CPU).
    `threads`: intra-op threads of every session (default: onnxruntime's, one per core).
    `step_file`: run another decoder-step graph of the same directory (export uses it to
    compare the int8 graph with fp32).
    `profile_dir`: profile the decoder step with onnxruntime's profiler into this folder,
    beside the graph as onnxruntime optimized it (`decoder_step_optimized.onnx`, for node names);
    `end_profiling()` returns the trace file (benchmarks.profile_ort reads it)."""

    name = "ort"
    # MLAS computes each output sample of the codec the same way whatever the clip's
    # length: a prefix decodes to the whole clip's samples before its last frames
    # (the server streams prefix decodes; tests/test_server_engine.py pins it).
    prefix_decode_exact = True

    def __init__(self, engine_dir: str | Path, *, providers: list[str] | None = None,
                 step_file: str | None = None, threads: int | None = None, profile_dir: str | Path | None = None):
        s = self.sessions = OrtSessions(engine_dir, providers=providers, threads=threads)
        # The request side of the Backend protocol is the shared part's.
        self.manifest, self.shapes, self.tokenizer, self.is_random = s.manifest, s.shapes, s.tokenizer, s.is_random
        self.encode_text, self.decode_audio, self.encode_audio = s.encode_text, s.decode_audio, s.encode_audio
        self._step = s.open("decoder_step", step_file,
                            profile_dir=Path(profile_dir) if profile_dir is not None else None)
        self._on_cuda = self._step.get_providers()[0] == "CUDAExecutionProvider"
        self._step_info = self.manifest.graphs["decoder_step"]
        self._step_dtypes = {t.name: t.np_dtype for t in self._step_info.inputs}
        self._kv_names = step_kv_names(self.shapes.num_layers)
        missing = [n for n in self._kv_names if n not in self._step_dtypes]
        if missing:
            raise ExportDirError(f"{self.manifest.root}: decoder_step has no input {missing[0]!r}: "
                                 "re-export the model with this version of `editgen export`")
        self._kv_dtype = self._step_dtypes[self._kv_names[0]]
        self._kv_key: tuple | None = None  # (pool array, rows) last bound
        self._binding = self._step.io_binding()
        self._bound: dict[str, _Binding] = {}
        self.binds = 0  # bind_input calls so far (0 per step in steady state)
        self.input_copies = 0  # inputs converted or made contiguous before binding (0 in steady state)
        self._outputs: dict[str, np.ndarray] = {}
        self._out_rows = -1
        self.slots: SlotTable | None = None
        self.pool: HostKVPool | None = None

    # -- slots ------------------------------------------------------------------------

    def open(self, max_slots: int) -> None:
        self.slots = SlotTable(self.shapes, max_slots)
        self.pool = HostKVPool(self.shapes, self._kv_dtype)
        self._kv_key = None

    def admit(self, slots: np.ndarray, hidden: np.ndarray, mask: np.ndarray, edit) -> None:
        """hidden [R, T, text_hidden], mask [R, T] -> cross K/V of rows `slots`, kept in the pool;
        edit (EditStepInputs, rows R) kept in the slot table."""
        self.sessions.admit(self.slots, self.pool, slots, hidden, mask, edit)

    def release(self, slots: np.ndarray) -> None:
        self.slots.release(slots)

    # -- the step -----------------------------------------------------------------------

    def step(self, batch: StepBatch) -> StepOutputs:
        """One decoder step (editgen.engine.contract)."""
        if self._step is None:
            raise RuntimeError("step() on a closed OrtBackend")
        phys = self.slots.expand(batch)
        n = phys.rows
        self.pool.ensure(n, phys.attended, self.slots.needed_positions())
        if n != self._out_rows:
            self._allocate_outputs(n)
        keep = [self._bind("codes", phys.codes), self._bind("positions", phys.positions),  # converted
                self._bind("text_mask", phys.text_mask)]  # copies must outlive the run
        self._bind_kv(n)
        keep += [self._bind(name, getattr(phys.edit, name.removeprefix("edit_"))) for name in STEP_EDIT_INPUTS]
        if self._on_cuda:
            self._binding.synchronize_inputs()
        self._step.run_with_iobinding(self._binding)
        if self._on_cuda:
            self._binding.synchronize_outputs()
        del keep
        out = self._outputs
        self.pool.write(batch.slots, batch.positions, out["new_kv"])
        self.slots.written(batch)
        return StepOutputs(logits=out["logits"][batch.slots],
                           cross_attn=out["cross_attn"][:, batch.slots[batch.want_maps]])

    def _bind_kv(self, rows: int) -> None:
        """Bind every per-layer K/V input to its block of the pool (rows 0..rows-1).
        Skipped while the pool and the row count are the ones last bound."""
        key = tuple((a.__array_interface__["data"][0], a.shape) for a in (self.pool.kv, self.pool.cross_k,
                                                                         self.pool.cross_v)) + (rows,)
        if key == self._kv_key:
            return
        kv, ck, cv = self.pool.kv, self.pool.cross_k, self.pool.cross_v
        L = self.shapes.num_layers
        views = [v for i in range(L) for v in (kv[i, 0, :rows], kv[i, 1, :rows])]
        views += [v for i in range(L) for v in (ck[i, :rows], cv[i, :rows])]
        for name, view in zip(self._kv_names, views):
            if view.dtype != self._kv_dtype or not view.flags.c_contiguous:
                raise AssertionError(f"pool view {name} is not a contiguous {self._kv_dtype} block")
            self._bind(name, view)
        self._kv_key = key

    def _bind(self, name: str, array: np.ndarray) -> np.ndarray:
        dtype = self._step_dtypes[name]
        if array.dtype != dtype or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=dtype)
            self.input_copies += 1
        ptr = array.__array_interface__["data"][0]
        seen = self._bound.get(name)
        if seen is None or seen.ptr != ptr or seen.shape != array.shape or seen.dtype != dtype:
            self._binding.bind_input(name, "cpu", 0, dtype, array.shape, ptr)
            self._bound[name] = _Binding(ptr, array.shape, dtype)
            self.binds += 1
        return array

    def _allocate_outputs(self, rows: int) -> None:
        axes = {"rows": rows}
        self._outputs = {}
        for spec in self._step_info.outputs:
            buf = np.empty(spec.resolve(axes), dtype=spec.np_dtype)
            self._binding.bind_output(spec.name, "cpu", 0, buf.dtype, buf.shape, buf.__array_interface__["data"][0])
            self._outputs[spec.name] = buf
        self._out_rows = rows

    def end_profiling(self) -> Path:
        return Path(self._step.end_profiling())

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        self.sessions.close()
        self._step = self._binding = None
        self._outputs = {}
        self._bound.clear()
        self._kv_key = None
        self.slots = self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
