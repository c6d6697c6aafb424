"""ONNX Runtime backend: runs an `editgen export` directory with onnxruntime and numpy
only (no torch). CUDAExecutionProvider when onnxruntime has it, else CPU.

The decoder step runs through one IOBinding:
- inputs are bound to the caller's numpy buffers by pointer (no copy on CPU), and
  rebound only when a buffer's address, shape or dtype changes. The graph takes one
  K/V tensor per layer (past_key_i, past_value_i, cross_key_i, cross_value_i:
  editgen.engine.backend.step_kv_names); the runtime keeps its single buffers
  (KVCache.array [layers, 2, rows, heads, capacity, head_dim], cross K/V
  [layers, rows, heads, T, head_dim]) and binds each input to its contiguous block
  (kv_cache[i, 0], ...) by pointer. The generation loop reuses its buffers (KV cache,
  frame codes, edit tensors, cross K/V), so in steady state a step binds nothing and
  nothing is copied, neither here nor in the graph (no input is sliced there): the graph
  reads the KV cache where it lies and returns only this position's K/V (`new_kv`),
  which the loop writes (O(new) bytes).
- outputs are bound to buffers preallocated for the current number of rows and reused
  while it holds. `step` returns the same StepOutputs object every time: its arrays are
  valid until the next `step` call (copy what you keep).

On CUDA the bound host buffers are copied to and from the device by onnxruntime on every
run (correct, not the fast path: a device-resident cache needs a device-side KV write).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort

from editgen.engine.backend import StepOutputs, step_kv_names, step_kv_views
from editgen.engine.manifest import GraphInfo, Manifest, load_manifest
from editgen.engine.tokenizer import TextTokenizer
from editgen.errors import AudioError, ExportDirError, first_line

# Edit tensors: graph input name -> EditStepInputs field.
_EDIT_INPUTS = (("edit_src_row", "src_row"), ("edit_mapper", "mapper"), ("edit_alpha", "alpha"),
                ("edit_weight", "weight"), ("edit_window", "window"), ("edit_blend", "blend"),
                ("edit_use_captured", "use_captured"), ("edit_captured", "captured"))


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclasses.dataclass
class _Binding:
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


class OrtBackend:
    """Backend protocol (editgen.engine.backend) over an exported directory.

    `providers`: onnxruntime execution providers (default: CUDA if present, then CPU).
    `step_file`: run another decoder-step graph of the same directory (export uses it to
    compare the int8 graph with fp32)."""

    name = "ort"

    def __init__(self, engine_dir: str | Path, *, providers: list[str] | None = None,
                 step_file: str | None = None):
        self.manifest: Manifest = load_manifest(engine_dir)
        self.shapes = self.manifest.shapes
        self.is_random = bool(self.manifest.data.get("is_random", False))
        self.tokenizer = TextTokenizer.from_file(self.manifest.tokenizer_file,
                                                 max_tokens=self.shapes.max_text_tokens)
        self.providers = list(providers) if providers is not None else default_providers()
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._text = self._session("text_encoder")
        self._cross = self._session("cross_kv")
        self._step = self._session("decoder_step", step_file)
        self._on_cuda = self._step.get_providers()[0] == "CUDAExecutionProvider"
        self._step_info = self.manifest.graphs["decoder_step"]
        self._step_dtypes = {t.name: t.np_dtype for t in self._step_info.inputs}
        self._kv_names = step_kv_names(self.shapes.num_layers)
        missing = [n for n in self._kv_names if n not in self._step_dtypes]
        if missing:
            raise ExportDirError(f"{self.manifest.root}: decoder_step has no input {missing[0]!r}: "
                                 "re-export the model with this version of `editgen export`")
        self._kv_dtype = self._step_dtypes[self._kv_names[0]]
        self._kv_key: tuple | None = None  # (ptr, shape, dtype) of the K/V buffers last bound
        self._binding = self._step.io_binding()
        self._bound: dict[str, _Binding] = {}
        self.binds = 0  # bind_input calls so far (0 per step in steady state)
        self._position = np.zeros((), dtype=np.int64)  # bound once; written each step
        self._out: StepOutputs | None = None
        self._out_rows = -1

    # -- sessions -----------------------------------------------------------------------

    def _session(self, graph: str, file: str | None = None) -> ort.InferenceSession:
        info: GraphInfo = self.manifest.graphs[graph]
        path = self.manifest.root / (file or info.file)
        if not path.is_file():
            raise ExportDirError(f"engine directory {self.manifest.root} is missing {path.name}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / ...
            raise ExportDirError(f"{path} cannot be loaded by onnxruntime: {first_line(exc)}") from None
        want = [t.name for t in info.inputs], [t.name for t in info.outputs]
        have = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if want != have:
            raise ExportDirError(f"{path} does not match manifest.json (inputs/outputs {have}, "
                                 f"manifest {want}): re-export the model")
        self._sessions[graph] = session
        return session

    def _lazy(self, graph: str) -> ort.InferenceSession:
        session = self._sessions.get(graph)
        return session if session is not None else self._session(graph)

    # -- per request --------------------------------------------------------------------

    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: [n, T] int64 -> hidden [n, T, text_hidden] float32."""
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        return self._text.run(["hidden"], feed)[0]

    def cross_kv(self, hidden: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """hidden [rows, T, text_hidden], mask [rows, T] -> K, V [layers, rows, heads, T, head_dim]."""
        feed = {"hidden": np.ascontiguousarray(hidden, dtype=np.float32),
                "text_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        k, v = self._cross.run(["cross_k", "cross_v"], feed)
        return k, v

    # -- the step -----------------------------------------------------------------------

    def step(self, codes, position, kv_cache, cross_k, cross_v, text_mask, edit) -> StepOutputs:
        """One decoder step (docs/design.md). Does not write kv_cache. The returned arrays
        are this backend's buffers: valid until the next call."""
        if self._step is None:
            raise RuntimeError("step() on a closed OrtBackend")
        L = self.shapes.num_layers
        if (kv_cache.dtype != self._kv_dtype or not kv_cache.flags.c_contiguous or kv_cache.ndim != 6
                or kv_cache.shape[:2] != (L, 2)):
            # A converted copy would move O(cache) bytes every step: refuse instead.
            raise TypeError(f"kv_cache must be a C-contiguous {self._kv_dtype} array [{L}, 2, rows, heads, "
                            f"capacity, head_dim], got {kv_cache.dtype} {kv_cache.shape} "
                            f"(contiguous: {kv_cache.flags.c_contiguous})")
        rows = codes.shape[0]
        if rows != self._out_rows:
            self._allocate_outputs(rows)
        self._position[()] = position
        keep = [  # converted inputs must outlive the run
            self._bind("codes", codes), self._bind("position", self._position), self._bind("text_mask", text_mask),
        ]
        keep += self._bind_kv(kv_cache, cross_k, cross_v)
        for name, field in _EDIT_INPUTS:
            keep.append(self._bind(name, getattr(edit, field)))
        if self._on_cuda:
            self._binding.synchronize_inputs()
        self._step.run_with_iobinding(self._binding)
        if self._on_cuda:
            self._binding.synchronize_outputs()
        del keep
        return self._out

    def _bind_kv(self, kv_cache, cross_k, cross_v) -> list[np.ndarray]:
        """Bind every per-layer K/V input to its block of the caller's buffers. Skipped
        (no view made, nothing bound) while the three buffers are the ones last bound."""
        key = tuple((a.__array_interface__["data"][0], a.shape, a.dtype.str) for a in (kv_cache, cross_k, cross_v))
        if key == self._kv_key:
            return []
        converted = []
        for a in (cross_k, cross_v):  # small (once per request): converted if need be, never cached then
            ok = a.dtype == self._kv_dtype and a.flags.c_contiguous
            converted.append(a if ok else np.ascontiguousarray(a, dtype=self._kv_dtype))
        views = step_kv_views(kv_cache, *converted)
        keep = [self._bind(name, views[name]) for name in self._kv_names]
        same = all(c is a for c, a in zip(converted, (cross_k, cross_v)))
        self._kv_key = key if same else None
        return keep

    def _bind(self, name: str, array: np.ndarray) -> np.ndarray:
        dtype = self._step_dtypes[name]
        if array.dtype != dtype or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=dtype)
        ptr = array.__array_interface__["data"][0]
        seen = self._bound.get(name)
        if seen is None or seen.ptr != ptr or seen.shape != array.shape or seen.dtype != dtype:
            self._binding.bind_input(name, "cpu", 0, dtype, array.shape, ptr)
            self._bound[name] = _Binding(ptr, array.shape, dtype)
            self.binds += 1
        return array

    def _allocate_outputs(self, rows: int) -> None:
        axes = {"rows": rows}
        buffers = {}
        for spec in self._step_info.outputs:
            buf = np.empty(spec.resolve(axes), dtype=spec.np_dtype)
            self._binding.bind_output(spec.name, "cpu", 0, buf.dtype, buf.shape, buf.__array_interface__["data"][0])
            buffers[spec.name] = buf
        self._out = StepOutputs(logits=buffers["logits"], new_kv=buffers["new_kv"], cross_attn=buffers["cross_attn"])
        self._out_rows = rows

    # -- audio --------------------------------------------------------------------------

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """codes [n, K, frames] -> waveforms [n, samples] float32."""
        feed = {"codes": np.ascontiguousarray(codes, dtype=np.int64)}
        return self._lazy("encodec_decode").run(["audio"], feed)[0]

    def encode_audio(self, wav: np.ndarray) -> np.ndarray:
        """wav [samples] mono float32 at shapes.sample_rate -> codes [K, frames] int64."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        need = self.manifest.encodec_min_samples
        if wav.ndim != 1 or wav.shape[0] < need:
            raise AudioError(f"audio is {wav.shape[-1] if wav.ndim else 0} samples, the encoder needs a mono "
                             f"clip of at least {need} ({need / self.shapes.sample_rate:.2f} s)")
        return self._lazy("encodec_encode").run(["codes"], {"wav": wav})[0]

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        self._sessions.clear()
        self._text = self._cross = self._step = None
        self._binding = None
        self._out = None
        self._bound.clear()
        self._kv_key = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
