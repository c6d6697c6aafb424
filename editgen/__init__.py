"""EditGen: Prompt-to-Prompt music editing on MusicGen.

    import editgen
    with editgen.open_backend(model="random:tiny") as backend:       # or engine="export_dir/"
        song = editgen.generate(backend, "lofi piano", editgen.GenerationOptions(seconds=2))
        result = editgen.edit(backend, [editgen.EditSpec(source="lofi piano", target="lofi guitar")],
                              editgen.GenerationOptions(seconds=2))

Importing this package imports no torch; the torch backend loads it when chosen."""

from editgen.engine.edit import EditSpec
from editgen.engine.editing import Region, capture_source, edit, edit_from_capture
from editgen.engine.options import GenerationOptions
from editgen.engine.runtime import generate, open_backend
from editgen.errors import EditGenError
from editgen.version import __version__

__all__ = [
    "EditGenError", "EditSpec", "GenerationOptions", "Region", "__version__", "capture_source", "edit",
    "edit_from_capture", "generate", "open_backend",
]
