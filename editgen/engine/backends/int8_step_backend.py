"""The CPU engine of an int8 export: the whole decoder step in one call of the C++ int8
step (editgen/kernels/cpu/int8_step.cc), the K/V cache int8 (kv8_pool.Int8KVPool); text
encoder, cross K/V and EnCodec on onnxruntime (ort_sessions), EnCodec's LSTM in int8
where the export has it (int8_codec). Torch-free.

Why: run as onnxruntime segments around the K/V kernel, a step of random:small took ~4x
its bytes floor (docs/benchmarks.md, "The int8 step"): 25 session runs with their
dispatch, ~750 small nodes, and every row's full fp32 cross K/V. One call runs the step
on the library's worker threads, reads each weight once for all rows and each row's
cross K/V only at its real text tokens.

`open_backend` runs it for an int8 export on CPU where the library builds (use_int8_step).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort

from editgen.engine.backends.int8_codec import Int8Codec, use_int8_codec
from editgen.engine.backends.kv8_pool import Int8KVPool
from editgen.engine.backends.ort_sessions import OrtSessions
from editgen.engine.backends.slots import SlotTable
from editgen.engine.contract import StepBatch, StepOutputs
from editgen.errors import ExportDirError
from editgen.kernels import cpu_library
from editgen.kernels.cpu_step import Int8StepModel, step_args


@dataclasses.dataclass
class _RowBuffers:
    """The outputs of one row count n (reused every step)."""

    logits: np.ndarray  # float32 [n, K, vocab]
    maps: np.ndarray  # float32 [layers, n, heads, T]
    write: np.ndarray  # uint8 [n]


class Int8StepBackend:
    """Backend protocol over an int8 export's `int8_step.npz`. `threads`: the step's and
    onnxruntime's (default: the CPUs this process may use)."""

    name = "int8-step"
    # The ORT codec graphs and the int8 LSTM (each frame's input quantized on its own) make
    # each output sample the same whatever the clip's length (tests/test_int8_codec.py).
    prefix_decode_exact = True

    def __init__(self, engine_dir: str | Path, *, threads: int | None = None):
        s = self.sessions = OrtSessions(engine_dir, providers=["CPUExecutionProvider"], threads=threads)
        # The request side of the Backend protocol is the shared part's.
        self.manifest, self.shapes, self.tokenizer, self.is_random = s.manifest, s.shapes, s.tokenizer, s.is_random
        self.encode_text, self.decode_audio, self.encode_audio = s.encode_text, s.decode_audio, s.encode_audio
        if use_int8_codec(s):  # EnCodec's LSTM in int8 (int8_codec.py)
            self.decode_audio = Int8Codec(s, threads=threads).decode_audio
        entry = self.manifest.int8_step
        if entry is None:
            raise ExportDirError(f"{self.manifest.root} has no int8 step: re-export it with "
                                 "`editgen export --quantize int8`")
        cpu_library.load()  # KernelBuildError now, not at the first step
        sh = self.shapes
        self.weights = Int8StepModel(self.manifest.root / entry["file"], layers=sh.num_layers, heads=sh.num_heads,
                                     codebooks=sh.num_codebooks, vocab=sh.vocab_size, text_tokens=sh.max_text_tokens)
        self.threads = threads or cpu_library.usable_cpus()
        self.profile: np.ndarray | None = None  # float64 [len(cpu_step.PARTS)]: set to time the step's parts
        self._rows: dict[int, _RowBuffers] = {}
        self._workspace = np.zeros(0, np.uint8)
        self.slots: SlotTable | None = None
        self.pool: Int8KVPool | None = None

    def open(self, max_slots: int) -> None:
        self.slots = SlotTable(self.shapes, max_slots)
        self.pool = Int8KVPool(self.shapes)
        self._rows.clear()

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
            buf = self._rows[n] = _RowBuffers(
                logits=np.zeros((n, s.num_codebooks, s.vocab_size), np.float32),
                maps=np.zeros((s.num_layers, n, s.num_heads, s.max_text_tokens), np.float32),
                write=np.zeros(n, np.uint8))
        return buf

    def step(self, batch: StepBatch) -> StepOutputs:
        """One decoder step (editgen.engine.contract)."""
        if self.slots is None:
            raise RuntimeError("step() before open(), or after close()")
        phys = self.slots.expand(batch)
        n, pool = phys.rows, self.pool
        pool.ensure(n, phys.attended, self.slots.needed_positions())
        buf = self._buffers(n)
        buf.write.fill(0)
        buf.write[batch.slots] = 1
        edit = phys.edit
        injecting = np.flatnonzero((edit.self_blend * edit.self_window[:, None]).any(axis=1))
        # The kernel reads a source's self-attention probabilities at the injecting row's own positions.
        assert np.array_equal(phys.positions[edit.src_row[injecting]], phys.positions[injecting]), "source not in step"
        need = self.weights.workspace_bytes(n, pool.positions)
        if self._workspace.size < need:
            self._workspace = np.zeros(need + need // 8, np.uint8)
        self.weights.run(step_args(threads=self.threads, codes=phys.codes, positions=phys.positions,
                                   write=buf.write, text_mask=phys.text_mask, edit=phys.edit, pool=pool,
                                   logits=buf.logits, maps=buf.maps, workspace=self._workspace,
                                   profile=self.profile))
        self.slots.written(batch)
        return StepOutputs(logits=buf.logits[batch.slots], cross_attn=buf.maps[:, batch.slots[batch.want_maps]])

    def close(self) -> None:
        self.sessions.close()
        self._rows.clear()
        self.slots = self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def use_int8_step(engine_dir: str | Path) -> bool:
    """Whether `open_backend` runs this export with the int8 step: it has one, the CPU
    provider is the one onnxruntime would use, the library builds here, and the export
    found it the faster CPU path (or could not measure it: no library on that machine)."""
    from editgen.engine.manifest import load_manifest

    entry = load_manifest(engine_dir).int8_step
    if entry is None or "CUDAExecutionProvider" in ort.get_available_providers() or not cpu_library.available():
        return False
    return "skipped" in entry or entry.get("default") == Int8StepBackend.name
