"""Choosing and opening a backend; the plain `generate` entry point."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.contract import Backend
from editgen.engine.editing import Job, run_job
from editgen.engine.requests import Request
from editgen.engine.options import GenerationOptions
from editgen.errors import InvalidRequestError

BACKENDS = ("torch", "ort", "triton")


def open_backend(*, model: str | None = None, engine: str | None = None, backend: str | None = None,
                 threads: int | None = None) -> Backend:
    """`model` (a checkpoint, hub id or random:<preset>) runs on the torch backend, or with
    backend="triton" on the fused Triton kernels (CUDA; on CPU only under
    TRITON_INTERPRET=1, slow); `engine` (an exported directory) runs on onnxruntime: an
    int8 export on CPU with the path its export measured fastest where the CPU kernels
    build here (editgen.engine.backends.int8_step_backend.use_int8_step), else its
    standard step. `threads`: intra-op threads (default: one per core)."""
    if (model is None) == (engine is None):
        raise InvalidRequestError("give exactly one of --model (checkpoint) or --engine (exported directory)")
    if engine is not None:
        kind = backend or "ort"
        if kind == "ort":
            from editgen.engine.backends.int8_step_backend import Int8StepBackend, use_int8_step
            from editgen.engine.backends.ort_backend import OrtBackend

            if use_int8_step(engine):  # an int8 export on CPU: the whole step in C++
                return Int8StepBackend(engine, threads=threads)
            return OrtBackend(engine, threads=threads)
        raise InvalidRequestError(f"backend {kind!r} cannot run an exported directory: use ort")
    kind = backend or "torch"
    if kind not in ("torch", "triton"):
        raise InvalidRequestError(f"backend {kind!r} needs an exported directory: run `editgen export` and pass --engine")
    from editgen.model.loading import load_musicgen

    if kind == "triton":
        from editgen.engine.backends.kernel_backend import KernelBackend, resolve_device

        device = resolve_device()  # no GPU and no interpreter: one line, before the slow load
        return KernelBackend(load_musicgen(model), device=device)
    from editgen.engine.backends.torch_backend import TorchBackend

    return TorchBackend(load_musicgen(model))


@dataclasses.dataclass
class Generated:
    wav: np.ndarray  # [channels, samples] float32 (channels: the model's, 1 or 2)
    codes: np.ndarray  # [K, frames] int64
    sample_rate: int


def generate_job(backend: Backend, prompt: str, options: GenerationOptions) -> Job:
    """Codes of one prompt; the result is Generated (decoded audio)."""
    request = Request(backend.shapes, [backend.tokenizer.encode(prompt)], options)

    def finish(r: Request) -> Generated:
        codes = r.codes()
        return Generated(backend.decode_audio(codes)[0], codes[0], backend.shapes.sample_rate)

    return Job(request, finish)


def generate(backend: Backend, prompt: str, options: GenerationOptions, *, progress: bool = True) -> Generated:
    return run_job(backend, generate_job(backend, prompt, options), progress)
