"""The ORT engine with an int8 self-attention cache: the decoder step as num_layers + 1
onnxruntime segments (editgen.model.step_segments) with the C++ int8 KV attention kernel
(editgen.kernels.cpu_attention) between them. CPU only; torch-free.

Why: on CPU the fp32 K/V reads are the largest part of a long edit's step
(docs/benchmarks.md, "int8 KV cache"); an int8 cache with per-position scales reads 3.8x
fewer bytes, and no onnxruntime operator reads it at memory speed while letting the
self-attention probabilities be injected.

Per step, for rows 0..n-1 of the pool (SlotTable.expand, as OrtBackend):
    segment 0                  codes, positions -> x, qkv of layer 0
    for layer i: kernel        qkv, the pool's int8 K/V of layer i -> attn (and the new K/V
                               quantized into the pool at each batch row's position)
                 segment i + 1 x, attn, cross K/V of layer i, edit -> x, qkv of layer i + 1,
                               the layer's cross-attention maps (last: logits)
Every segment has its own IOBinding, bound to buffers kept per row count: in steady state a
step binds nothing and copies nothing O(cache).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort

from editgen.engine.backends.kv8_pool import Int8KVPool
from editgen.engine.backends.ort_sessions import OrtSessions
from editgen.engine.backends.slots import SlotTable
from editgen.engine.contract import SEGMENT_EDIT_INPUTS, StepBatch, StepOutputs
from editgen.errors import ExportDirError
from editgen.kernels import cpu_attention, cpu_library

_EDIT_FIELDS = tuple(name.removeprefix("edit_") for name in SEGMENT_EDIT_INPUTS)


@dataclasses.dataclass
class _RowBuffers:
    """Every per-step array of one row count n (bound once, reused every step)."""

    x: tuple[np.ndarray, np.ndarray]  # float32 [n, 1, hidden] x2: segment i reads one, writes the other
    qkv: np.ndarray  # float32 [n, 1, 3 * hidden]
    attn: np.ndarray  # float32 [n, 1, hidden]
    logits: np.ndarray  # float32 [n, K, vocab]
    maps: np.ndarray  # float32 [layers, n, heads, T]
    write: np.ndarray  # uint8 [n]
    self_b: np.ndarray  # float32 [layers, n]


def _ptr(array: np.ndarray) -> int:
    assert array.flags.c_contiguous
    return array.__array_interface__["data"][0]


class SegmentedOrtBackend:
    """Backend protocol over an int8 export with segments (`manifest.segment_graphs`).
    CPU provider only. `threads`: onnxruntime's intra-op threads and the kernel's (default:
    the CPUs this process may use). `profile_dir`: every segment runs under onnxruntime's
    profiler (OrtSessions.open; benchmarks.step_parts reads the traces)."""

    name = "ort-kv8"

    def __init__(self, engine_dir: str | Path, *, threads: int | None = None, profile_dir: str | Path | None = None):
        # A step is num_layers + 1 runs of as many sessions, each with its own thread pool:
        # threads that kept spinning after their run took the cores from the next session's
        # (a 10 s edit took 210 s instead of 25 s). They stop when their run returns.
        s = self.sessions = OrtSessions(engine_dir, providers=["CPUExecutionProvider"], threads=threads,
                                        session_config={"session.force_spinning_stop": "1"})
        # The request side of the Backend protocol is the shared part's.
        self.manifest, self.shapes, self.tokenizer, self.is_random = s.manifest, s.shapes, s.tokenizer, s.is_random
        self.encode_text, self.decode_audio, self.encode_audio = s.encode_text, s.decode_audio, s.encode_audio
        self._segments = self.manifest.segment_graphs
        if len(self._segments) != self.shapes.num_layers + 1:
            raise ExportDirError(f"{self.manifest.root} has no int8-KV segments: re-export it with "
                                 "`editgen export --quantize int8`")
        cpu_library.load()  # KernelBuildError now, not at the first step
        self._kernel_threads = threads or cpu_library.usable_cpus()
        profile = Path(profile_dir) if profile_dir is not None else None
        self._step = [s.open(info.name, info=info, profile_dir=profile) for info in self._segments]
        self._bindings = [session.io_binding() for session in self._step]
        self.binds = 0  # bind_input/bind_output calls so far (0 per step in steady state)
        self._rows: dict[int, _RowBuffers] = {}
        self._scratch = np.zeros(0, np.float32)
        self._bound_key: tuple | None = None
        self.slots: SlotTable | None = None
        self.pool: Int8KVPool | None = None

    def open(self, max_slots: int) -> None:
        self.slots = SlotTable(self.shapes, max_slots)
        self.pool = Int8KVPool(self.shapes)
        self._rows.clear()
        self._bound_key = None

    def admit(self, slots: np.ndarray, hidden: np.ndarray, mask: np.ndarray, edit) -> None:
        """hidden [R, T, text_hidden], mask [R, T] -> cross K/V of rows `slots`, kept in the pool;
        edit (EditStepInputs, rows R) kept in the slot table."""
        self.sessions.admit(self.slots, self.pool, slots, hidden, mask, edit)

    def release(self, slots: np.ndarray) -> None:
        self.slots.release(slots)

    def _buffers(self, n: int) -> _RowBuffers:
        buf = self._rows.get(n)
        if buf is None:
            s = self.shapes
            hidden = s.hidden_size
            buf = _RowBuffers(
                x=(np.zeros((n, 1, hidden), np.float32), np.zeros((n, 1, hidden), np.float32)),
                qkv=np.zeros((n, 1, 3 * hidden), np.float32), attn=np.zeros((n, 1, hidden), np.float32),
                logits=np.zeros((n, s.num_codebooks, s.vocab_size), np.float32),
                maps=np.zeros((s.num_layers, n, s.num_heads, s.max_text_tokens), np.float32),
                write=np.zeros(n, np.uint8), self_b=np.zeros((s.num_layers, n), np.float32))
            self._rows[n] = buf
        return buf

    def step(self, batch: StepBatch) -> StepOutputs:
        """One decoder step (editgen.engine.contract)."""
        if self._step is None:
            raise RuntimeError("step() on a closed SegmentedOrtBackend")
        phys = self.slots.expand(batch)
        n, pool = phys.rows, self.pool
        pool.ensure(n, phys.attended, self.slots.needed_positions())
        buf = self._buffers(n)
        buf.write.fill(0)
        buf.write[batch.slots] = 1
        edit = phys.edit
        np.multiply(edit.self_blend.T, edit.self_window, out=buf.self_b)  # [layers, n]: b while the window is on
        injecting = buf.self_b.any(axis=0)
        if injecting.any():  # the kernel reads the source's probabilities at the row's own positions
            rows = np.flatnonzero(injecting)
            assert np.array_equal(phys.positions[edit.src_row[rows]], phys.positions[rows]), "source not in step"
        need = n * self.shapes.num_heads * (pool.positions + cpu_attention.BLOCK)
        if self._scratch.size < need:
            self._scratch = np.zeros(need, np.float32)

        # What the segments are bound to: per-row-count buffers, SlotTable buffers (fixed until
        # open() resets the key) and the pool's cross K/V, which move when it grows in slots.
        # Pointers, not ids: a new array may get a freed one's id.
        key = (n, _ptr(pool.cross_k), _ptr(pool.cross_v), pool.cross_k.shape)
        if key != self._bound_key:  # bind every segment again
            self._bind_all(n, phys, buf)
            self._bound_key = key
        # The library entry point itself, with pointers computed once per step: the checked
        # wrapper (cpu_attention.kv8_attention) costs its asserts and ctypes lookups per layer.
        kernel, layers = cpu_library.load().editgen_kv8_attention, self.shapes.num_layers
        fixed = [_ptr(a) for a in (phys.positions, buf.write, buf.qkv, edit.src_row)]
        pools = [(_ptr(a), a[0].nbytes) for a in (pool.k8, pool.kscale, pool.v8, pool.vscale)]
        self_b, scratch, attn = _ptr(buf.self_b), _ptr(self._scratch), _ptr(buf.attn)
        shape = (n, pool.slot_capacity, self.shapes.num_heads, self.shapes.head_dim, pool.positions)
        self._step[0].run_with_iobinding(self._bindings[0])
        for i in range(layers):
            k8, ks, v8, vs = (base + i * size for base, size in pools)
            status = kernel(*shape, *fixed, self_b + i * n * 4, k8, ks, v8, vs, scratch, attn, self._kernel_threads)
            assert status == 0, status
            self._step[i + 1].run_with_iobinding(self._bindings[i + 1])
        self.slots.written(batch)
        return StepOutputs(logits=buf.logits[batch.slots], cross_attn=buf.maps[:, batch.slots[batch.want_maps]])

    def _bind_all(self, n: int, phys, buf: _RowBuffers) -> None:
        """Bind every segment's inputs and outputs to the buffers of row count n (kept until
        the row count or the pool's cross K/V change: `step`'s key)."""
        pool, edit = self.pool, phys.edit
        edits = {f"edit_{name}": getattr(edit, name) for name in _EDIT_FIELDS}
        self._bind(0, {"codes": phys.codes, "positions": phys.positions}, {"x": buf.x[0], "qkv": buf.qkv})
        last = self.shapes.num_layers
        for i in range(last):
            inputs = {"x": buf.x[i % 2], "attn": buf.attn, "cross_key": pool.cross_k[i, :n],
                      "cross_value": pool.cross_v[i, :n], "text_mask": phys.text_mask, **edits}
            outputs = ({"logits": buf.logits, "cross_attn": buf.maps[i]} if i + 1 == last
                       else {"x_next": buf.x[(i + 1) % 2], "qkv": buf.qkv, "cross_attn": buf.maps[i]})
            self._bind(i + 1, inputs, outputs)

    def _bind(self, index: int, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        binding = self._bindings[index]
        for name, array in inputs.items():
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, _ptr(array))
        for name, array in outputs.items():
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, _ptr(array))
        self.binds += len(inputs) + len(outputs)

    def end_profiling(self) -> list[Path]:
        """The segments' onnxruntime traces (with `profile_dir`), in segment order."""
        return [Path(session.end_profiling()) for session in self._step]

    def close(self) -> None:
        self.sessions.close()
        self._step = None
        self._bindings = []
        self._rows.clear()
        self._bound_key = None
        self.slots = self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def use_segmented(engine_dir: str | Path) -> bool:
    """Whether `open_backend` runs this export with the int8 KV cache: it has segments, the
    CPU provider is the one onnxruntime would use, and the kernel builds here."""
    from editgen.engine.manifest import load_manifest

    if not load_manifest(engine_dir).segment_graphs or "CUDAExecutionProvider" in ort.get_available_providers():
        return False
    return cpu_library.available()
