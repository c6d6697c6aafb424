"""Audio as the server sends it: 16-bit PCM WAV bytes, and the codes of a running
request decoded chunk by chunk.

The codec's boundary. EnCodec's decoder is not causal: its convolutions look a few
frames ahead, and at the end of a clip it reflect-pads, so the last frames of a decoded
prefix differ from the same frames decoded as part of the whole clip. Its LSTM is
causal. So a prefix of f frames, decoded alone, gives the whole decode's samples for its
first f - HOLDBACK_FRAMES frames (frames f-4..f-1 differ, every earlier sample is equal)
-- provided the decoder's kernels compute each output the same way whatever the clip's
length. ONNX Runtime's do (MLAS: the reduction order of an output does not depend on the
length; tests/test_server_engine.py pins it), and such a backend says so with
`prefix_decode_exact = True`. torch's do not: oneDNN picks its convolution kernels by
the input's length, so a 14-frame prefix and the 150-frame clip round differently in the
last bit (up to 1.2e-7, which flips a 16-bit sample now and then; which prefixes a
stream decodes depends on when the codec thread is free, so two streams of one request
could differ too). For such a backend each prefix is decoded at the clip's final length,
the frames not yet sampled filled with code 0: every decode of the clip then has the
same shape, so the same kernels, so the same bits before the holdback. That costs a
decode of the whole clip per chunk (cheap on a GPU; the torch backend on a CPU is the
reference, not the serving path).

The stream sends only those settled samples, so the streamed bytes equal the
non-streamed WAV. Chunk sizes grow geometrically (ServerConfig.stream_growth) up to a
cap, which keeps the decode work a small multiple of one full decode (of `chunks` full
decodes where prefixes are padded) while the first chunk comes early."""

from __future__ import annotations

import math
import struct

import numpy as np

HOLDBACK_FRAMES = 4  # EnCodec decoder look-ahead: frames f-4..f-1 of an f-frame prefix are not final
_WAV_HEADER = "<4sI4s4sIHHIIHH4sI"


def pcm16(wav: np.ndarray) -> bytes:
    """wav: float32 [channels, samples] in [-1, 1] (clipped) -> little-endian int16 bytes,
    channels interleaved. One conversion for streamed and whole files, so both give the
    same bytes."""
    return (np.rint(np.clip(wav.T, -1.0, 1.0) * 32767.0).astype("<i2")).tobytes()


def wav_header(samples: int, sample_rate: int, channels: int = 1) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV of `samples` samples per channel."""
    data = 2 * samples * channels
    return struct.pack(_WAV_HEADER, b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, channels, sample_rate,
                       2 * channels * sample_rate, 2 * channels, 16, b"data", data)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """wav: float32 [channels, samples]."""
    return wav_header(wav.shape[-1], sample_rate, wav.shape[0]) + pcm16(wav)


def decode_prefix(backend, codes: np.ndarray, frames: int) -> np.ndarray:
    """codes [K, f], the first f of a clip's `frames` frames -> float32 [channels, samples]
    whose first (f - HOLDBACK_FRAMES) frames of samples are the whole clip's, bit for bit
    (see the module's docstring: decoded alone where the backend's kernels allow it, at
    the final length otherwise)."""
    if not getattr(backend, "prefix_decode_exact", False):
        full = np.zeros((codes.shape[0], frames), codes.dtype)
        full[:, : codes.shape[1]] = codes
        codes = full
    return backend.decode_audio(codes[None])[0]


class ChunkPlan:
    """Where chunks end, in frames: first, then each `growth` times longer, at most
    `max_chunk` frames."""

    def __init__(self, first: int, growth: float, max_chunk: int):
        self.next_end, self._size = first, first
        self.growth, self.max_chunk = growth, max_chunk

    def due(self, settled: int) -> bool:
        return settled >= self.next_end

    def advance(self, sent: int) -> None:
        self._size = min(self.max_chunk, math.ceil(self._size * self.growth))
        self.next_end = sent + self._size
