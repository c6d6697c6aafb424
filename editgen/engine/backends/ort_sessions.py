"""What every ONNX Runtime backend of an `editgen export` directory shares, as one part
each backend holds (composition, not a base class): the manifest and tokenizer, sessions
opened and checked against the manifest, the text encoder, the cross K/V of admitted rows,
and EnCodec. The backends differ only in how they run the decoder step (ort_backend: the
standard step on onnxruntime; int8_step_backend: the C++ int8 step).

Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from editgen.engine.backends.slots import HostKVPool, SlotTable
from editgen.engine.manifest import GraphInfo, Manifest, load_manifest
from editgen.engine.tokenizer import TextTokenizer
from editgen.errors import AudioError, ExportDirError, first_line


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtSessions:
    """An export directory opened for onnxruntime.

    `providers`: execution providers (default: CUDA if present, then CPU). `threads`:
    intra-op threads of every session (default: onnxruntime's, one per core).
    `session_config`: onnxruntime session config entries of every session."""

    def __init__(self, engine_dir: str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                 session_config: dict[str, str] | None = None):
        self.manifest: Manifest = load_manifest(engine_dir)
        self.shapes = self.manifest.shapes
        self.is_random = self.manifest.is_random
        self.tokenizer = TextTokenizer.from_file(self.manifest.tokenizer_file,
                                                 max_tokens=self.shapes.max_text_tokens)
        self.providers = list(providers) if providers is not None else default_providers()
        self.threads = threads
        self.session_config = dict(session_config or {})
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._text = self.open("text_encoder")
        self._cross = self.open("cross_kv")

    def open(self, graph: str, file: str | None = None, info: GraphInfo | None = None, *,
             profile_dir: Path | None = None) -> ort.InferenceSession:
        """A session of `graph` (or of `file`, another graph of the directory with the same
        inputs and outputs), checked against the manifest. `profile_dir`: onnxruntime's
        profiler on (traces `<graph>_*.json`), and the graph as onnxruntime optimized it saved
        there (`<graph>_optimized.onnx`, for node names)."""
        info = info or self.manifest.graphs[graph]
        path = self.manifest.root / (file or info.file)
        if not path.is_file():
            raise ExportDirError(f"engine directory {self.manifest.root} is missing {path.name}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_dir / graph)
            options.optimized_model_filepath = str(profile_dir / f"{graph}_optimized.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             f"{graph}_optimized.data")
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
        return session if session is not None else self.open(graph)

    # -- text -------------------------------------------------------------------------

    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: [n, T] int64 -> hidden [n, T, text_hidden] float32."""
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        return self._text.run(["hidden"], feed)[0]

    def admit(self, table: SlotTable, pool: HostKVPool, slots: np.ndarray, hidden: np.ndarray,
              mask: np.ndarray, edit) -> None:
        """Rows `slots` join `table` with their static edit tensors (EditStepInputs, rows R);
        their cross K/V (from hidden [R, T, text_hidden], mask [R, T]) are written into `pool`
        (any HostKVPool: they share the cross K/V layout)."""
        table.admit(slots, mask, edit)
        feed = {"hidden": np.ascontiguousarray(hidden, dtype=np.float32),
                "text_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        k, v = self._cross.run(["cross_k", "cross_v"], feed)  # [layers, R, heads, T, head_dim]
        pool.ensure(int(np.max(slots)) + 1, pool.positions, table.needed_positions())
        pool.cross_k[:, slots] = k
        pool.cross_v[:, slots] = v

    # -- audio --------------------------------------------------------------------------

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """codes [n, K, frames] -> waveforms [n, channels, samples] float32."""
        feed = {"codes": np.ascontiguousarray(codes, dtype=np.int64)}
        return self._lazy("encodec_decode").run(["audio"], feed)[0]

    def encode_audio(self, wav: np.ndarray) -> np.ndarray:
        """wav [channels, samples] float32 at shapes.sample_rate -> codes [K, frames] int64."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        need, channels = self.manifest.encodec_min_samples, self.shapes.audio_channels
        if wav.ndim != 2 or wav.shape[0] != channels:
            raise AudioError(f"audio of shape {wav.shape}: the encoder takes [channels, samples] with "
                             f"{channels} channel(s)")
        if wav.shape[1] < need:
            raise AudioError(f"audio is {wav.shape[1]} samples, the encoder needs a clip of at least "
                             f"{need} ({need / self.shapes.sample_rate:.2f} s)")
        return self._lazy("encodec_encode").run(["codes"], {"wav": wav})[0]

    def close(self) -> None:
        self._sessions.clear()
        self._text = self._cross = None
