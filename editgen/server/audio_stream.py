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
last bit (up to 1.2e-7, which flips a 16-bit sample now and then). For such a backend a
prefix is decoded at its chunk's final length, the frames not yet sampled filled with
code 0: every decode of the chunk then has the same shape, so the same kernels, so the
same bits before the holdback (a decode of the whole chunk per piece: cheap on a GPU; the
torch backend on a CPU is the reference, not the serving path).

The whole file is decoded on the grid of editgen.engine.codec_chunks (one call up to
its chunk length, 30 s; longer songs chunk by chunk), and the stream sends the same
samples (StreamPlan): the first chunk as a growing prefix, sending only settled samples,
so audio starts after 10 frames (prefix sizes grow geometrically, ServerConfig.stream_growth,
up to a cap, which keeps that chunk's decode work a small multiple of one decode); every
later chunk of a long song once, when its frames are settled. So the streamed bytes equal
the non-streamed WAV, and the decode work stays linear in the song's length."""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np

from editgen.engine import codec_chunks
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


def decode_piece(backend, codes: np.ndarray, piece: Span, chunk_end: int) -> np.ndarray:
    """codes [K, piece.end - piece.start] -> float32 [channels, samples] of frames
    [piece.keep_start, piece.keep_end), bit for bit the whole file's. A prefix of a chunk
    (piece.end < chunk_end, the chunk's last input frame) is decoded alone where the
    backend's kernels allow it, else at the chunk's length (the module's docstring)."""
    if piece.end < chunk_end and not getattr(backend, "prefix_decode_exact", False):
        full = np.zeros((codes.shape[0], chunk_end - piece.start), codes.dtype)
        full[:, : codes.shape[1]] = codes
        codes, piece = full, dataclasses.replace(piece, end=chunk_end)
    return codec_chunks.decode_span(backend, codes, piece)


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
        span = self._span_of(self.sent)
        if settled >= span.end:  # the chunk's codes are all there: the rest of it, at once
            return Span(self.sent, span.keep_end, span.start, span.end)
        end = settled - HOLDBACK_FRAMES
        if span is self.spans[0] and end > self.sent and self.growing.due(end):  # a prefix of the first chunk
            return Span(self.sent, end, 0, settled)
        return None

    def chunk_end(self, piece: Span) -> int:
        """The last input frame (exclusive) of the chunk `piece` belongs to."""
        return self._span_of(piece.keep_start).end

    def _span_of(self, frame: int) -> Span:
        """The codec chunk that sends `frame`."""
        return self.spans[min(frame // self.chunks.chunk, len(self.spans) - 1)]

    def sent_to(self, frame: int) -> None:
        self.sent = frame
        self.growing.advance(frame)
