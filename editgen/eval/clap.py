"""CLAP similarity (LAION-CLAP through transformers' ClapModel), from a local directory only.

The directory is what `ClapModel.save_pretrained` + `ClapProcessor.save_pretrained`
write (e.g. a copy of laion/clap-htsat-unfused): config.json, weights, tokenizer and
feature-extractor files. Nothing is downloaded. torch and transformers are imported
when a scorer is built, never at module import.

Audio is resampled to the feature extractor's rate (48 kHz for LAION-CLAP). Clips longer
than the model's window (10 s) are embedded window by window and the unit embeddings
averaged, so the processor's random crop is never used and scores are deterministic.
"""

from __future__ import annotations

import json
from math import gcd
from pathlib import Path

import numpy as np

from editgen.errors import CheckpointError, EditGenError

CLAP_SAMPLE_RATE = 48_000  # LAION-CLAP's rate; used when the extractor does not say


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _check_dir(model_dir: Path) -> None:
    """Cheap checks first, so the usual mistakes get a specific message."""
    if not model_dir.is_dir():
        raise CheckpointError(f"CLAP checkpoint directory {model_dir} does not exist")
    config = model_dir / "config.json"
    if not config.is_file():
        raise CheckpointError(
            f"{model_dir} has no config.json: --clap wants a transformers ClapModel directory "
            "(saved with save_pretrained, e.g. a local copy of laion/clap-htsat-unfused)"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {config}: {_one_line(exc)}") from exc
    if model_type != "clap":
        raise CheckpointError(f"{model_dir} holds a {model_type!r} model, not CLAP (model_type 'clap')")


def _pooled(output):
    # transformers >= 5 returns a ModelOutput whose pooler_output is the projection;
    # 4.x returns the projected tensor itself.
    return output if hasattr(output, "shape") else output.pooler_output


class ClapScorer:
    """Cosine similarities in CLAP's joint space. Not thread-safe (one torch model)."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        _check_dir(model_dir)
        try:
            import torch
            from transformers import ClapModel, ClapProcessor
        except ImportError as exc:
            raise EditGenError(
                f"CLAP scores need torch and transformers ({_one_line(exc)}): pip install 'editgen[export]'"
            ) from exc
        try:
            self.model = ClapModel.from_pretrained(str(model_dir), local_files_only=True).eval()
            self.processor = ClapProcessor.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
            raise CheckpointError(f"cannot load CLAP checkpoint {model_dir}: {_one_line(exc)}") from exc
        self._torch = torch
        self.model_dir = str(model_dir)
        extractor = self.processor.feature_extractor
        self.sample_rate = int(getattr(extractor, "sampling_rate", CLAP_SAMPLE_RATE))
        self.window = int(getattr(extractor, "nb_max_samples", 10 * self.sample_rate))

    def _resample(self, y: np.ndarray, sr: int) -> np.ndarray:
        from scipy.signal import resample_poly

        if sr == self.sample_rate:
            return y.astype(np.float32)
        g = gcd(sr, self.sample_rate)
        return resample_poly(y, self.sample_rate // g, sr // g).astype(np.float32)

    def _windows(self, y: np.ndarray) -> list[np.ndarray]:
        """Consecutive model windows; a tail under half a window is dropped (it would be
        repeat-padded into a mostly artificial clip) unless it is the whole clip."""
        chunks = [y[i : i + self.window] for i in range(0, len(y), self.window)]
        if len(chunks) > 1 and len(chunks[-1]) < self.window // 2:
            chunks.pop()
        return chunks

    def audio_embedding(self, y: np.ndarray, sr: int) -> np.ndarray:
        """y: float32 [n] mono at `sr`. -> unit vector [dim]"""
        chunks = self._windows(self._resample(y, sr))
        # One window per extractor call: with truncation="fusion" (fused checkpoints) the
        # extractor marks a random clip of a batch as "longer"; alone, it is always that clip.
        extract = self.processor.feature_extractor
        feats = [extract(c, sampling_rate=self.sample_rate, return_tensors="pt") for c in chunks]
        inputs = {k: self._torch.cat([f[k] for f in feats]) for k in feats[0].keys()}
        with self._torch.inference_mode():
            emb = _pooled(self.model.get_audio_features(**inputs))  # [windows, dim]
        return _unit(_unit(emb.float().numpy()).mean(axis=0))

    def text_embedding(self, text: str) -> np.ndarray:
        """-> unit vector [dim]"""
        inputs = self.processor.tokenizer([text], padding=True, truncation=True, return_tensors="pt")
        with self._torch.inference_mode():
            emb = _pooled(self.model.get_text_features(**inputs))  # [1, dim]
        return _unit(emb.float().numpy()[0])

    def text_audio(self, text: str, y: np.ndarray, sr: int) -> float:
        return float(self.text_embedding(text) @ self.audio_embedding(y, sr))

    def audio_audio(self, a: np.ndarray, b: np.ndarray, sr: int) -> float:
        return float(self.audio_embedding(a, sr) @ self.audio_embedding(b, sr))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
