"""Audio as the server sends it: 16-bit PCM WAV bytes, and the codes of a running
request decoded chunk by chunk.

The codec's boundary. EnCodec's decoder is not causal: its convolutions look a few
frames ahead, and at the end of a clip it reflect-pads, so the last frames of a decoded
prefix differ from the same frames decoded as part of the whole clip. Its LSTM is
causal. So a prefix of f frames, decoded alone, gives samples bit-identical to the full
decode for its first f - HOLDBACK_FRAMES frames (measured: frames f-4..f-1 differ, every
earlier sample is equal; tests/test_server_engine.py pins it on the exported codec).

The whole file is decoded on the grid of editgen.engine.codec_chunks (one call up to
its chunk length, 30 s; longer songs chunk by chunk), and the stream sends the same
samples (StreamPlan): the first chunk as a growing prefix, sending only settled samples,
so audio starts after 10 frames (prefix sizes grow geometrically, ServerConfig.stream_growth,
up to a cap, which keeps that chunk's decode work a small multiple of one decode); every
later chunk of a long song once, when its frames are settled. So the streamed bytes equal
the non-streamed WAV, and the decode work stays linear in the song's length."""

from __future__ import annotations

import math
import struct

import numpy as np

from editgen.engine.codec_chunks import CodecChunks, Span

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


class StreamPlan:
    """What a streaming ticket decodes next, on the whole file's codec grid (module doc)."""

    def __init__(self, frames: int, chunks: CodecChunks, growing: ChunkPlan):
        self.frames, self.chunks, self.growing = frames, chunks, growing
        self.spans = chunks.spans(frames)
        self.sent = 0  # frames sent

    def next(self, settled: int) -> Span | None:
        """The next piece to decode and send once `settled` frames (of every track) are final,
        or None (not yet, or everything sent). Its codes are frames [start, end); it sends
        frames [keep_start, keep_end)."""
        if self.sent >= self.frames:
            return None
        index = min(self.sent // self.chunks.chunk, len(self.spans) - 1)
        span = self.spans[index]
        if settled >= span.end:  # the chunk's codes are all there: the rest of it, at once
            return Span(self.sent, span.keep_end, span.start, span.end)
        end = settled - HOLDBACK_FRAMES
        if index == 0 and end > self.sent and self.growing.due(end):  # a prefix of the first chunk
            return Span(self.sent, end, 0, settled)
        return None

    def sent_to(self, frame: int) -> None:
        self.sent = frame
        self.growing.advance(frame)
