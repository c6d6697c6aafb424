"""MusicGen's audio codec for mono and stereo checkpoints, as transformers runs it.

A stereo MusicGen (musicgen-stereo-*) interleaves its codebooks: codebook 2c is EnCodec
codebook c of the left channel, 2c + 1 of the right. transformers' generate decodes
`codes[:, ::2]` and `codes[:, 1::2]` with the mono 32 kHz EnCodec one after the other
and concatenates the channels; its encode does the same per channel and interleaves.
These functions do exactly that (one codec call per channel, never the channels as a
batch, so the numbers are transformers' own), for the torch backend and the exported
EnCodec graphs alike.
"""

from __future__ import annotations

import torch


def decode_codes(codec, codes: torch.Tensor, channels: int) -> torch.Tensor:
    """codes: [clips, K, frames] int64 -> audio [clips, channels, samples] float32."""
    if channels == 1:  # EnCodec takes [chunks=1, clips, K, frames], gives [clips, 1, samples]
        return codec.decode(codes[None], [None])[0]
    per_channel = [codec.decode(codes[:, c::channels][None], [None])[0][:, 0] for c in range(channels)]
    return torch.stack(per_channel, dim=1)


def encode_audio(codec, wav: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """wav: [channels, samples] float32 -> codes [K, frames] int64, K = channels x EnCodec's
    codebooks, interleaved as the decoder's codebooks."""
    channels = wav.shape[0]
    # [chunks=1, batch=1, codebooks, frames] per channel
    codes = [codec.encode(wav[c][None, None], bandwidth=bandwidth).audio_codes[0, 0] for c in range(channels)]
    if channels == 1:
        return codes[0]
    return torch.stack(codes, dim=1).flatten(0, 1)  # [codebooks, channels, frames] -> [K, frames]
