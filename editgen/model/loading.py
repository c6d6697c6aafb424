"""Load a MusicGen checkpoint: a local Hugging Face directory, a hub id, or
`random:<preset>`. Every failure is a one-line CheckpointError."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from editgen.engine.config import ModelShapes
from editgen.engine.tokenizer import TextTokenizer, build_preset_tokenizer
from editgen.errors import CheckpointError, first_line

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
SUPPORTED = ("editgen runs MusicGen text-to-music checkpoints (model_type 'musicgen', mono or stereo: "
             "facebook/musicgen-small/-medium/-large, facebook/musicgen-stereo-small/-medium/-large)")


@dataclasses.dataclass(frozen=True)
class LoadedMusicgen:
    model: object  # transformers MusicgenForConditionalGeneration, eval mode, fp32
    tokenizer: TextTokenizer
    shapes: ModelShapes
    name: str
    is_random: bool
    tokenizer_json: str  # serialized tokenizers.Tokenizer, copied into exports


def shapes_of(model, max_text_tokens: int = 64) -> ModelShapes:
    dec = model.config.decoder
    enc = model.audio_encoder.config
    return ModelShapes(
        num_layers=dec.num_hidden_layers, hidden_size=dec.hidden_size, num_heads=dec.num_attention_heads,
        num_codebooks=dec.num_codebooks, vocab_size=dec.vocab_size, pad_token_id=dec.pad_token_id,
        max_positions=dec.max_position_embeddings, text_hidden_size=model.config.text_encoder.hidden_size,
        max_text_tokens=max_text_tokens, sample_rate=enc.sampling_rate, frame_rate=enc.frame_rate,
        audio_channels=dec.audio_channels,
    )


def check_architecture(config: dict, where: str) -> None:
    """A config.json that is not a MusicGen text-to-music model: one line naming what is
    supported. MusicGen-Melody is named on its own: it conditions the decoder by a prefix
    (text and melody chroma prepended to the codes), with no cross-attention to edit."""
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type == "musicgen_melody":
        raise CheckpointError(f"{where} is a MusicGen-Melody checkpoint, which conditions by a prefix, not by "
                              f"cross-attention, so Prompt-to-Prompt cannot edit it: {SUPPORTED}")
    if model_type != "musicgen":
        arch = ", ".join(config.get("architectures") or []) if isinstance(config, dict) else ""
        raise CheckpointError(f"{where} is not a MusicGen checkpoint (model_type {model_type!r}"
                              f"{', ' + arch if arch else ''}): {SUPPORTED}")


def check_codec(model, where: str) -> None:
    """The decoder's codebooks must be the codec's, once per audio channel (stereo:
    interleaved), decoded by a mono EnCodec; anything else would fail deep in a decode."""
    dec, codec = model.config.decoder, model.audio_encoder
    per_channel = codec.quantizer.get_num_quantizers_for_bandwidth(max(codec.config.target_bandwidths))
    if codec.config.audio_channels != 1 or dec.num_codebooks != dec.audio_channels * per_channel:
        raise CheckpointError(
            f"{where}: the decoder has {dec.num_codebooks} codebooks for {dec.audio_channels} audio channel(s), "
            f"its EnCodec gives {per_channel} per channel for {codec.config.audio_channels} channel(s); "
            f"{SUPPORTED}")


def load_musicgen(spec: str) -> LoadedMusicgen:
    """`spec`: `random:<preset>`, a checkpoint directory, or a hub id such as
    `facebook/musicgen-small` (needs network access)."""
    if not spec or not spec.strip():
        raise CheckpointError("no model given: pass --model random:tiny, a checkpoint directory or a hub id")
    if spec.startswith("random:"):
        return _load_random(spec.split(":", 1)[1])
    if os.path.exists(spec):
        return _load_dir(Path(spec))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return _load_hub(spec)
    raise CheckpointError(f"model {spec!r} not found: no such directory, and not a hub id or random:<preset>")


def _loaded(model, tokenizer: TextTokenizer, name: str, is_random: bool, tokenizer_json: str) -> LoadedMusicgen:
    check_codec(model, name)
    shapes = shapes_of(model, tokenizer.max_tokens)
    return LoadedMusicgen(model, tokenizer, shapes, name, is_random, tokenizer_json)


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars are not the user's output


def _load_random(preset: str) -> LoadedMusicgen:
    from editgen.model.presets import build_random_musicgen, get_preset

    get_preset(preset)  # validates the name before the slow part
    _quiet_transformers()
    tok = build_preset_tokenizer()
    model = build_random_musicgen(preset, text_vocab_size=tok.get_vocab_size())
    return _loaded(model, TextTokenizer(tok), f"random:{preset}", True, tok.to_str())


def _load_dir(path: Path) -> LoadedMusicgen:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json: is it a MusicGen checkpoint directory?")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {first_line(exc)}") from None
    check_architecture(config, f"checkpoint {path}")  # before weights: a Melody dir is named as such
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise CheckpointError(f"checkpoint {path} has no weights ({' or '.join(_WEIGHT_FILES[::2])})")
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no tokenizer.json")
    try:
        tokenizer = TextTokenizer.from_file(tok_file)
    except Exception as exc:  # tokenizers raises a bare Exception on a broken file
        raise CheckpointError(f"checkpoint {path} is corrupt: {first_line(exc)}") from None
    model = _from_pretrained(str(path), local_files_only=True)
    return _loaded(model, tokenizer, str(path), False, tok_file.read_text())


HUB_CONNECT_TIMEOUT_S = 2.0


def hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """One TCP connect to the hub's host: False at once when offline, instead of the
    download client's retries (~24 s before it gives up)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:  # DNS failure, refused, unreachable, timeout
        return False


def _load_hub(repo_id: str) -> LoadedMusicgen:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings are not the user's message
    if not hub_reachable():
        # Offline: only a checkpoint already in the local cache loads, read without any
        # network call (the download client would retry for ~24 s first).
        tok_file = try_to_load_from_cache(repo_id, "tokenizer.json")
        config_file = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(tok_file, str) or not isinstance(config_file, str):
            raise CheckpointError(
                f"could not fetch {repo_id} from the model hub (no network, and it is not in the local cache): "
                "when offline, pass a local checkpoint directory (or random:<preset>)"
            )
        _check_config_file(config_file, repo_id)
        model = _from_pretrained(repo_id, local_files_only=True)
        return _loaded(model, TextTokenizer.from_file(tok_file), repo_id, False, Path(tok_file).read_text())
    try:
        _check_config_file(hf_hub_download(repo_id, "config.json"), repo_id)
        tok_file = hf_hub_download(repo_id, "tokenizer.json")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"could not fetch {repo_id} from the model hub ({type(exc).__name__}): "
            "when offline, pass a local checkpoint directory (or random:<preset>)"
        ) from None
    model = _from_pretrained(repo_id)
    return _loaded(model, TextTokenizer.from_file(tok_file), repo_id, False, Path(tok_file).read_text())


def _check_config_file(config_file: str, repo_id: str) -> None:
    try:
        config = json.loads(Path(config_file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{repo_id}: config.json is corrupt: {first_line(exc)}") from None
    check_architecture(config, repo_id)


def _from_pretrained(name: str, **kwargs):
    _quiet_transformers()
    from transformers import MusicgenForConditionalGeneration

    try:
        model = MusicgenForConditionalGeneration.from_pretrained(name, torch_dtype="float32", **kwargs)
    except Exception as exc:
        raise CheckpointError(f"cannot load MusicGen weights from {name}: {first_line(exc)}") from None
    return model.eval()
