"""EnCodec decode with an int8 LSTM (editgen.export.int8_codec): the head graph on
onnxruntime, the LSTM in C++ (editgen.kernels.cpu_lstm), the tail graph on onnxruntime.
The CPU engine of an int8 export decodes with it where the export found its audio within
MIN_SNR_DB of the fp32 decode; a clip's audio does not depend on the other clips decoded
with it or on its own length (every LSTM input frame is quantized on its own). Torch-free."""

from __future__ import annotations

import numpy as np

from editgen.engine.backends.ort_sessions import OrtSessions
from editgen.kernels import cpu_library
from editgen.kernels.cpu_lstm import Int8Lstm

MIN_SNR_DB = 40.0  # the int8 decode's agreement with fp32 below which the engine decodes in fp32


class Int8Codec:
    def __init__(self, sessions: OrtSessions, *, threads: int | None):
        manifest = sessions.manifest
        head, tail = manifest.int8_codec_graphs
        self._head = sessions.open(head.name, info=head)
        self._tail = sessions.open(tail.name, info=tail)
        with np.load(manifest.root / manifest.int8_codec["file"]) as data:
            arrays = {name: data[name] for name in data.files}
        self._lstm = Int8Lstm(arrays, threads=threads or cpu_library.usable_cpus())

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """codes [n, K, frames] -> waveforms [n, channels, samples] float32."""
        x = self._head.run(["x"], {"codes": np.ascontiguousarray(codes, dtype=np.int64)})[0]  # [n, channels, dim, frames]
        n, channels, dim, frames = x.shape
        y = self._lstm(x.reshape(n * channels, dim, frames)).reshape(x.shape)
        return self._tail.run(["audio"], {"x": y})[0]


def use_int8_codec(sessions: OrtSessions) -> bool:
    """The export has the int8 codec, measured it within MIN_SNR_DB, and the library builds here."""
    entry = sessions.manifest.int8_codec
    if entry is None or not cpu_library.available():
        return False
    return entry.get("agreement", {}).get("snr_db", 0.0) >= MIN_SNR_DB
