"""Long-form: a request longer than one window runs as a chain of windows, as audiocraft
continues a generation past its 30 s.

MusicGen's decoder has 2048 positions (40.9 s) and was trained on 30 s clips. Window 0
covers song frames [0, W); window k + 1 starts C frames before window k ended and every
row is teacher-forced there on its own earlier output (the source on its codes, each
target on its edited codes), from position 0 again, then samples S = W - C new frames.
Window lengths and contexts are in frames (50 per second); the last window is shorter
when the song ends inside it. A request that fits one window is exactly the request
without windows.

Defaults: W = 30 s, what MusicGen was trained on and audiocraft's `max_duration`;
C = 10 s, a third of the window. audiocraft keeps 12 s (its `extend_stride` of 18 s);
each window re-runs its context, so a long song costs W / (W - C) times a single
window per second of audio: 1.5 with 10 s against 1.67 with 12 s.

The time axis of a request is the song's: step s of window k is song step start_k + s,
which is the step that makes codebook 0 of song frame start_k + s, as in a one-window
request. Per-word step windows, the self-injection window, regions and recorded maps
use song steps and song frames, never a window's own."""

from __future__ import annotations

import dataclasses

# The longest song a request may ask for, unless the CLI or server configures another.
DEFAULT_MAX_SECONDS = 600.0
DEFAULT_WINDOW_SECONDS = 30.0
DEFAULT_CONTEXT_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Window:
    """Song frames [start, end); [start, start + context) are forced to each row's own
    earlier output (context is 0 in the first window)."""

    start: int
    end: int
    context: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def new_from(self) -> int:
        """The first song frame this window samples."""
        return self.start + self.context


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    frames: int  # the song's frames
    span: int  # codebooks per channel: a window of f frames takes f + span - 1 steps
    windows: tuple[Window, ...]

    @classmethod
    def build(cls, frames: int, window_frames: int, context_frames: int, span: int) -> "WindowPlan":
        assert 0 <= context_frames < window_frames and frames >= 1, (frames, window_frames, context_frames)
        windows = [Window(0, min(frames, window_frames), 0)]
        while windows[-1].end < frames:
            start = windows[-1].end - context_frames
            windows.append(Window(start, min(frames, start + window_frames), context_frames))
        return cls(frames, span, tuple(windows))

    @classmethod
    def for_options(cls, shapes, options, max_seconds: float = DEFAULT_MAX_SECONDS) -> "WindowPlan":
        """The windows of a request with GenerationOptions `options` on a model of `shapes`;
        validates the duration (up to `max_seconds`) and the window options."""
        frames = options.frames(shapes, max_seconds)
        window, context = options.window_frames(shapes)
        return cls.build(frames, window, context, shapes.channel_codebooks)

    def steps(self, index: int) -> int:
        """Decoder steps of window `index` (its last span - 1 steps finish the delayed codebooks)."""
        return self.windows[index].frames + self.span - 1

    @property
    def total_steps(self) -> int:
        return sum(self.steps(i) for i in range(len(self.windows)))

    @property
    def song_steps(self) -> int:
        """Steps of the song's time axis (N of the step windows): those of one window of the
        whole song."""
        return self.frames + self.span - 1

    def seconds(self, frame_rate: int) -> list[list[float]]:
        """[[start, context end, end], ...] per window, in seconds (outputs record them)."""
        return [[w.start / frame_rate, w.new_from / frame_rate, w.end / frame_rate] for w in self.windows]
