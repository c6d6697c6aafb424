"""Model shapes the runtime needs to size its buffers. Read from the exported manifest
(ORT/TensorRT) or from the transformers config (torch backend)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelShapes:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_codebooks: int  # K
    vocab_size: int = 2048  # codes per codebook; the pad/BOS id is vocab_size
    pad_token_id: int = 2048
    max_positions: int = 2048
    text_hidden_size: int = 768
    max_text_tokens: int = 64  # T: every prompt is padded to this length
    sample_rate: int = 32000
    frame_rate: int = 50
    # EnCodec's first decoder conv (kernel 7) reflect-pads 3 frames on each side, which
    # needs more than 3 input frames; exported graphs cannot special-case shorter clips.
    min_frames: int = 4

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def steps_for_frames(self, frames: int) -> int:
        """Decoder steps that produce `frames` audio frames under the delay pattern."""
        return frames + self.num_codebooks - 1

    @property
    def max_frames(self) -> int:
        return self.max_positions - self.num_codebooks + 1

    @property
    def max_seconds(self) -> float:
        return self.max_frames / self.frame_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelShapes":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
