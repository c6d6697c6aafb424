"""Per-request generation options: frozen, keyword-only, validated on creation."""

from __future__ import annotations

import dataclasses
import math

from editgen.engine.config import ModelShapes
from editgen.engine.request_fields import option
from editgen.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    seconds: float = option(8.0, kind="number",
                            help="duration of the audio; rounded to the nearest frame (20 ms), at least 0.08 s")
    guidance_scale: float = option(3.0, kind="number", name="guidance",
                                   help="classifier-free guidance scale (<= 1: off, no null-text rows)")
    top_k: int = option(250, kind="integer", help="sample from the K most likely codes of each codebook")
    temperature: float = option(1.0, kind="number", help="sampling temperature (> 0)")
    greedy: bool = option(False, kind="switch", help="argmax instead of sampling")
    seed: int = option(0, kind="integer", help="random seed; each row has its own stream from it")

    def __post_init__(self):
        if not isinstance(self.seconds, (int, float)) or not math.isfinite(self.seconds) or self.seconds <= 0:
            raise InvalidRequestError(f"seconds must be a positive number, got {self.seconds}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise InvalidRequestError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise InvalidRequestError(f"top_k must be a positive integer, got {self.top_k}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise InvalidRequestError(f"temperature must be > 0, got {self.temperature} (use greedy for argmax)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidRequestError(f"seed must be a non-negative integer, got {self.seed}")

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def frames(self, shapes: ModelShapes) -> int:
        """Audio frames for `seconds`. One rule: `seconds` must lie in [min, max] seconds
        of the model (the codec's minimum clip, the decoder's positions); inside, it is
        rounded to the nearest frame (1 / frame_rate s)."""
        lo = shapes.min_frames / shapes.frame_rate
        if self.seconds < lo:
            raise InvalidRequestError(
                f"{self.seconds:g} s is shorter than the {shapes.min_frames} frames the audio codec needs: "
                f"ask for at least {lo:.2f} s"
            )
        if self.seconds > shapes.max_seconds:
            frames = self.seconds * shapes.frame_rate  # inf for a huge value (1e308 s): no ceil of it
            needs = shapes.steps_for_frames(math.ceil(frames)) if math.isfinite(frames) else "far more"
            raise InvalidRequestError(
                f"{self.seconds:g} s needs {needs} decoder positions, the model has "
                f"{shapes.max_positions}: ask for at most {shapes.max_seconds:.2f} s"
            )
        return min(max(round(self.seconds * shapes.frame_rate), shapes.min_frames), shapes.max_frames)
