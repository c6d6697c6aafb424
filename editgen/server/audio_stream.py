"""Audio as the server sends it: 16-bit PCM WAV bytes, and the codes of a running
request decoded chunk by chunk.

The codec's boundary. EnCodec's decoder is not causal: its convolutions look a few
frames ahead, and at the end of a clip it reflect-pads, so the last frames of a decoded
prefix differ from the same frames decoded as part of the whole clip. Its LSTM is
causal. So a prefix of f frames, decoded alone, gives samples bit-identical to the full
decode for its first f - HOLDBACK_FRAMES frames (measured: frames f-4..f-1 differ, every
earlier sample is equal; tests/test_server_stream.py pins it on the exported codec). The
stream decodes a growing prefix and sends only those settled samples, so the streamed
bytes equal the non-streamed WAV. A prefix costs a decode of all of it: chunk sizes grow
geometrically (ServerConfig.stream_growth) up to a cap, which keeps the total decode work
a small multiple of one full decode while the first chunk comes early."""

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
