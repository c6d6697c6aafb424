"""Per-request generation options: frozen, keyword-only, validated on creation."""

from __future__ import annotations

import dataclasses
import math

from editgen.engine.config import ModelShapes
from editgen.engine.request_fields import option
from editgen.engine.windows import DEFAULT_CONTEXT_SECONDS, DEFAULT_MAX_SECONDS, DEFAULT_WINDOW_SECONDS
from editgen.errors import InvalidRequestError, TooLongError, WindowError


# Guidance scales above this are refused. MusicGen's default is 3 and published settings
# stay below 10. The guided logits, uncond + (cond - uncond) x scale, are computed in
# float32 and grow linearly with the scale: far past 10 sampling is argmax of the
# difference whatever the temperature, and near float32's range (1e308 was accepted
# once) they overflow to inf and NaN and the codes are degenerate. 100 leaves ten times
# the useful range for experiments and keeps every guided logit finite.
MAX_GUIDANCE = 100.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    seconds: float = option(8.0, kind="number",
                            help="duration of the audio; rounded to the nearest frame (20 ms), at least 0.08 s, at "
                                 "most the configured maximum (600 s by default); longer than a window: windows")
    guidance_scale: float = option(3.0, kind="number", name="guidance",
                                   help="classifier-free guidance scale (<= 1: off, no null-text rows; at most 100)")
    top_k: int = option(250, kind="integer", help="sample from the K most likely codes of each codebook")
    temperature: float = option(1.0, kind="number", help="sampling temperature (> 0)")
    greedy: bool = option(False, kind="switch", help="argmax instead of sampling")
    seed: int = option(0, kind="integer", help="random seed; each row has its own stream from it")
    window_seconds: float = option(
        DEFAULT_WINDOW_SECONDS, kind="number",
        help="long-form window W: a longer request runs as windows of W s, each after the first re-reading the "
             "last context seconds of every row's own output; in [context + 1, 40.9] s")
    context_seconds: float = option(
        DEFAULT_CONTEXT_SECONDS, kind="number",
        help="long-form context C: seconds of its own output each row is teacher-forced on at the start of "
             "every window after the first (>= 0)")

    def __post_init__(self):
        if not isinstance(self.seconds, (int, float)) or not math.isfinite(self.seconds) or self.seconds <= 0:
            raise InvalidRequestError(f"seconds must be a positive number, got {self.seconds}")
        if not math.isfinite(self.guidance_scale) or not 0 <= self.guidance_scale <= MAX_GUIDANCE:
            raise InvalidRequestError(f"guidance_scale must be in [0, {MAX_GUIDANCE:g}], got {self.guidance_scale} "
                                      "(MusicGen's default is 3)")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise InvalidRequestError(f"top_k must be a positive integer, got {self.top_k}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise InvalidRequestError(f"temperature must be > 0, got {self.temperature} (use greedy for argmax)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidRequestError(f"seed must be a non-negative integer, got {self.seed}")
        for name in ("window_seconds", "context_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise WindowError(f"{name} must be a number of seconds, got {value!r}")
        if self.context_seconds < 0:
            raise WindowError(f"context_seconds must be >= 0, got {self.context_seconds:g}")
        if self.window_seconds < self.context_seconds + 1.0:
            raise WindowError(f"window_seconds {self.window_seconds:g} must be at least context_seconds + 1 s "
                              f"({self.context_seconds + 1.0:g} s): lengthen the window or shorten the context")

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def frames(self, shapes: ModelShapes, max_seconds: float = DEFAULT_MAX_SECONDS) -> int:
        """Audio frames for `seconds`. One rule: `seconds` must lie in [the codec's minimum
        clip, `max_seconds`] (a setting, not the decoder's positions: a longer request runs
        as windows); inside, it is rounded to the nearest frame (1 / frame_rate s)."""
        lo = shapes.min_frames / shapes.frame_rate
        if self.seconds < lo:
            raise InvalidRequestError(
                f"{self.seconds:g} s is shorter than the {shapes.min_frames} frames the audio codec needs: "
                f"ask for at least {lo:.2f} s"
            )
        self.check_length(max_seconds)
        return max(round(self.seconds * shapes.frame_rate), shapes.min_frames)

    def check_length(self, max_seconds: float) -> None:
        """`seconds` within the longest song accepted (a setting: the CLI's and server's --max-seconds)."""
        if self.seconds > max_seconds:
            raise TooLongError(f"{self.seconds:g} s is longer than the maximum of {max_seconds:g} s: "
                               f"ask for at most {max_seconds:g} s")

    def window_frames(self, shapes: ModelShapes) -> tuple[int, int]:
        """(window, context) in frames; the window must fit the decoder's positions."""
        window = round(self.window_seconds * shapes.frame_rate)
        if window > shapes.max_frames:
            raise WindowError(f"window_seconds {self.window_seconds:g} is more than the model's "
                              f"{shapes.max_seconds:.2f} s ({shapes.max_positions} positions): lower it")
        return window, round(self.context_seconds * shapes.frame_rate)
