"""Choosing and opening a backend; the plain `generate` entry point."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.contract import Backend
from editgen.engine.generate import generate_codes
from editgen.engine.options import GenerationOptions
from editgen.errors import InvalidRequestError

BACKENDS = ("torch", "ort")


def open_backend(*, model: str | None = None, engine: str | None = None, backend: str | None = None) -> Backend:
    """`model` (a checkpoint, hub id or random:<preset>) runs on the torch backend;
    `engine` (an exported directory) runs on onnxruntime (the default) or TensorRT."""
    if (model is None) == (engine is None):
        raise InvalidRequestError("give exactly one of --model (checkpoint) or --engine (exported directory)")
    if engine is not None:
        kind = backend or "ort"
        if kind == "ort":
            from editgen.engine.backends.ort_backend import OrtBackend

            return OrtBackend(engine)
        raise InvalidRequestError(f"backend {kind!r} cannot run an exported directory: use ort")
    kind = backend or "torch"
    if kind != "torch":
        raise InvalidRequestError(f"backend {kind!r} needs an exported directory: run `editgen export` and pass --engine")
    from editgen.engine.backends.torch_backend import TorchBackend
    from editgen.model.loading import load_musicgen

    return TorchBackend(load_musicgen(model))


@dataclasses.dataclass
class Generated:
    wav: np.ndarray  # [samples] float32
    codes: np.ndarray  # [K, frames] int64
    sample_rate: int


def generate(backend: Backend, prompt: str, options: GenerationOptions, *, progress: bool = True) -> Generated:
    tokenized = backend.tokenizer.encode(prompt)
    result = generate_codes(backend, [tokenized], options, progress=progress)
    wav = backend.decode_audio(result.codes)[0]
    return Generated(wav, result.codes[0], backend.shapes.sample_rate)
