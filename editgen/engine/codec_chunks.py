"""EnCodec over audio of any length: decode and encode in chunks with overlap, so memory
is bounded by the chunk and not by the song (decoding 30 s of random:small's codec
peaks near 2 GB; a 10-minute song decoded at once would need 40).

The grid. Audio of at most `chunk` frames is one codec call, exactly as before. Longer
audio is cut at multiples of `chunk` frames: chunk j keeps frames [j Q, (j + 1) Q) and is
computed from frames [j Q - overlap, (j + 1) Q + lookahead). EnCodec's convolutions look
a few frames ahead, so the lookahead makes the kept frames independent of where the input
ends (the decoder: exactly, editgen.server.audio_stream.HOLDBACK_FRAMES); its LSTM carries
state from the start, which the overlap warms up: the seam error falls with the overlap
(decoder, random:small, a 60 s clip: 3.8e-2 with no overlap, 6.3e-5 at 10 frames, 1.5e-7
at 25, 1.1e-7 at 50, float rounding; docs/benchmarks.md "Long-form"). The default overlap,
50 frames (1 s), is twice the length that reached rounding. Encoding uses the same grid.

The server streams on this grid too (audio_stream.StreamPlan), so streamed bytes equal
the whole file."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

CHUNK_FRAMES = 1500  # 30 s: a one-window request at the default window decodes in one call
OVERLAP_FRAMES = 50  # 1 s of left context per chunk
LOOKAHEAD_FRAMES = 4  # EnCodec's decoder looks 4 frames ahead (audio_stream.HOLDBACK_FRAMES)


@dataclasses.dataclass(frozen=True)
class Span:
    """Frames [keep_start, keep_end) of a chunk, computed from frames [start, end)."""

    keep_start: int
    keep_end: int
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class CodecChunks:
    chunk: int = CHUNK_FRAMES
    overlap: int = OVERLAP_FRAMES
    lookahead: int = LOOKAHEAD_FRAMES

    def __post_init__(self):
        assert self.chunk >= 1 and self.overlap >= 0 and self.lookahead >= 0, self

    @classmethod
    def of_seconds(cls, seconds: float, frame_rate: int) -> "CodecChunks":
        return cls(chunk=max(1, round(seconds * frame_rate)))

    def spans(self, frames: int) -> list[Span]:
        if frames <= self.chunk:
            return [Span(0, frames, 0, frames)]
        return [Span(k, min(k + self.chunk, frames), max(0, k - self.overlap),
                     min(frames, k + self.chunk + self.lookahead)) for k in range(0, frames, self.chunk)]


def decode_span(backend, codes: np.ndarray, span: Span) -> np.ndarray:
    """codes: [K, span.end - span.start], frames from span.start -> float32 [channels, samples]
    of frames [span.keep_start, span.keep_end)."""
    hop = backend.shapes.sample_rate // backend.shapes.frame_rate
    assert codes.shape[-1] == span.end - span.start, (codes.shape, span)
    wav = backend.decode_audio(codes[None])[0]  # [channels, samples]
    return wav[:, (span.keep_start - span.start) * hop: (span.keep_end - span.start) * hop]


def decode_chunks(backend, codes: np.ndarray, chunks: CodecChunks = CodecChunks()) -> Iterator[np.ndarray]:
    """codes: [K, frames] -> float32 [channels, samples] per chunk, in order."""
    for span in chunks.spans(codes.shape[-1]):
        yield decode_span(backend, codes[:, span.start: span.end], span)


def decode(backend, codes: np.ndarray, chunks: CodecChunks = CodecChunks()) -> np.ndarray:
    """codes: [K, frames] -> float32 [channels, frames * hop], chunk by chunk."""
    return np.concatenate(list(decode_chunks(backend, codes, chunks)), axis=-1)


def encode_chunks(backend, wav: np.ndarray, chunks: CodecChunks = CodecChunks()) -> Iterator[np.ndarray]:
    """wav: float32 [channels, samples] at the model's rate -> codes int64 [K, f] per chunk, in
    order (ceil(samples / hop) frames in all)."""
    hop = backend.shapes.sample_rate // backend.shapes.frame_rate
    for span in chunks.spans(-(-wav.shape[-1] // hop)):
        codes = backend.encode_audio(np.ascontiguousarray(wav[:, span.start * hop: span.end * hop]))  # [K, f]
        yield codes[:, span.keep_start - span.start: span.keep_end - span.start]


def encode(backend, wav: np.ndarray, chunks: CodecChunks = CodecChunks()) -> np.ndarray:
    """wav: float32 [channels, samples] -> codes int64 [K, ceil(samples / hop)], chunk by chunk."""
    return np.concatenate(list(encode_chunks(backend, wav, chunks)), axis=-1)
