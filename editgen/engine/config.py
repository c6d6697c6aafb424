"""Model shapes the runtime needs to size its buffers. Read from the exported manifest
(ORT/TensorRT) or from the transformers config (torch backend)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelShapes:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_codebooks: int  # K: all channels' codebooks (stereo: left/right interleaved, 2 x 4)
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
    # 2 for the stereo checkpoints (musicgen-stereo-*): codebook k belongs to channel
    # k % 2 and is codebook k // 2 of the mono 32 kHz EnCodec that decodes that channel.
    audio_channels: int = 1

    def __post_init__(self):
        # Shapes also come from files (export manifests, capture files): a ValueError that
        # their readers turn into one line, not an assert.
        if self.audio_channels not in (1, 2) or self.num_codebooks % self.audio_channels:
            raise ValueError(f"audio_channels {self.audio_channels!r} with {self.num_codebooks} codebooks: "
                             "MusicGen is mono or stereo (codebooks split evenly between the channels)")

    @property
    def channel_codebooks(self) -> int:
        """Codebooks per audio channel (EnCodec's); the delay pattern spans these."""
        return self.num_codebooks // self.audio_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def steps_for_frames(self, frames: int) -> int:
        """Decoder steps that produce `frames` audio frames under the delay pattern."""
        return frames + self.channel_codebooks - 1

    @property
    def max_frames(self) -> int:
        return self.max_positions - self.channel_codebooks + 1

    @property
    def max_seconds(self) -> float:
        return self.max_frames / self.frame_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelShapes":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
