"""EditGen: Prompt-to-Prompt music editing on MusicGen.

    import editgen
    with editgen.open_backend(model="random:tiny") as backend:       # or engine="export_dir/"
        song = editgen.generate(backend, "lofi piano", editgen.GenerationOptions(seconds=2))
        result = editgen.edit(backend, [editgen.EditSpec(source="lofi piano", target="lofi guitar")],
                              editgen.GenerationOptions(seconds=2))

Many requests sharing each step (continuous batching) go through an EngineCore:

    core = editgen.EngineCore(backend, max_rows=64)
    job = editgen.edit_job(backend, [spec], options)     # or generate_job / capture_job / ...
    core.submit(job.request)
    while not job.request.done:
        core.step()                                      # every running request advances one step
    result = job.result()

Importing this package imports no torch; the torch backend loads it when chosen."""

from editgen.engine.edit import EditSpec
from editgen.engine.core import EngineCore
from editgen.engine.jobs import (Job, Region, capture_job, capture_source, edit, edit_from_capture,
                                 edit_from_capture_job, edit_job, generate, generate_job)
from editgen.engine.options import GenerationOptions
from editgen.engine.runtime import open_backend
from editgen.errors import EditGenError
from editgen.version import __version__

__all__ = [
    "EditGenError", "EditSpec", "EngineCore", "GenerationOptions", "Job", "Region", "__version__", "capture_job",
    "capture_source", "edit", "edit_from_capture", "edit_from_capture_job", "edit_job", "generate", "generate_job",
    "open_backend",
]
