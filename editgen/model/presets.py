"""`random:<preset>` models: MusicGen with random weights and the real shapes.

Performance does not depend on weight values, so these give honest timings; they make
no sound worth hearing. `tiny`, `tiny2` and `tiny-stereo` are for tests; `small-stereo`
has the shapes of facebook/musicgen-stereo-small."""

from __future__ import annotations

import dataclasses

from editgen.errors import CheckpointError

SEED = 1234  # random weights are reproducible: the same preset gives the same model


@dataclasses.dataclass(frozen=True)
class DecoderPreset:
    layers: int
    hidden: int
    heads: int
    ffn: int
    audio_channels: int = 1  # 2: stereo, left/right codebooks interleaved

    @property
    def codebooks(self) -> int:
        return 4 * self.audio_channels  # EnCodec 32 kHz has 4 codebooks per channel


@dataclasses.dataclass(frozen=True)
class Preset:
    decoder: DecoderPreset
    t5: dict
    encodec: dict
    fit_text_vocab: bool = False  # test presets: the T5 vocabulary is the preset tokenizer's


_T5_BASE = dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, vocab_size=32128)
_T5_TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=1024)
# facebook/encodec_32khz: 4 codebooks of 2048 at 50 frames/s (hop 640).
_ENCODEC_32K = dict(
    sampling_rate=32000, codebook_size=2048, target_bandwidths=[2.2], upsampling_ratios=[8, 5, 4, 4],
    num_filters=64, hidden_size=128, num_lstm_layers=2, use_causal_conv=False, use_conv_shortcut=False,
    normalize=False, norm_type="weight_norm",
)
_ENCODEC_TINY = {**_ENCODEC_32K, "num_filters": 4, "hidden_size": 16, "num_lstm_layers": 1}

_SMALL = DecoderPreset(layers=24, hidden=1024, heads=16, ffn=4096)
_TINY = DecoderPreset(layers=2, hidden=64, heads=4, ffn=128)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(_TINY, _T5_TINY, _ENCODEC_TINY, fit_text_vocab=True),
    # A second small config with other heads/layers, so parity is not tuned to one shape.
    "tiny2": Preset(DecoderPreset(layers=3, hidden=96, heads=6, ffn=192), _T5_TINY, _ENCODEC_TINY,
                    fit_text_vocab=True),
    # Stereo: 8 codebooks (left/right interleaved), the mono codec per channel.
    "tiny-stereo": Preset(dataclasses.replace(_TINY, audio_channels=2), _T5_TINY, _ENCODEC_TINY,
                          fit_text_vocab=True),
    "small": Preset(_SMALL, _T5_BASE, _ENCODEC_32K),
    "small-stereo": Preset(dataclasses.replace(_SMALL, audio_channels=2), _T5_BASE, _ENCODEC_32K),  # musicgen-stereo-small
    "medium": Preset(DecoderPreset(layers=48, hidden=1536, heads=24, ffn=6144), _T5_BASE, _ENCODEC_32K),
    "large": Preset(DecoderPreset(layers=48, hidden=2048, heads=32, ffn=8192), _T5_BASE, _ENCODEC_32K),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset random:{name}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_random_musicgen(name: str, text_vocab_size: int | None = None):
    """MusicgenForConditionalGeneration with seeded random weights of preset `name`."""
    import torch
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    preset = get_preset(name)
    d = preset.decoder
    t5 = dict(preset.t5)
    if text_vocab_size is not None and preset.fit_text_vocab:
        t5["vocab_size"] = text_vocab_size
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=d.layers, ffn_dim=d.ffn,
        num_attention_heads=d.heads, hidden_size=d.hidden, num_codebooks=d.codebooks,
        pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048, audio_channels=d.audio_channels,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    config = MusicgenConfig(
        text_encoder=T5Config(**t5, feed_forward_proj="relu", dropout_rate=0.0).to_dict(),
        audio_encoder=EncodecConfig(**preset.encodec).to_dict(),
        decoder=decoder.to_dict(),
    )
    # Generation defaults as in facebook/musicgen-*.
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = MusicgenForConditionalGeneration(config)
        # transformers initialises EnCodec's codebooks to zeros: every code would then
        # decode to the same audio and every frame encode to code 0. Random codebooks
        # make decode and encode depend on their input, as with real weights.
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
    model.generation_config.pad_token_id = 2048
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.bos_token_id = 2048
    return model.eval()
