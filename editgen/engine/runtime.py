"""Choosing and opening a backend."""

from __future__ import annotations

from editgen.engine.contract import Backend
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
