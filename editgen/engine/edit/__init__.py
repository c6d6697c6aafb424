"""Prompt-to-Prompt edits as arrays: EditSpec -> EditPlan (compile_edit) -> per-step
EditStepInputs (EditBatch.inputs). numpy only; see docs/design.md, "The edit"."""

from editgen.engine.edit.alignment import needleman_wunsch, refine_alignment, replace_mapper
from editgen.engine.edit.blend import BlendSchedule
from editgen.engine.edit.plan import EditPlan, compile_edit, step_limits
from editgen.engine.edit.spec import OPS, EditSpec, word_key
from editgen.engine.edit.step_inputs import EditBatch, EditStepInputs

__all__ = [
    "OPS", "BlendSchedule", "EditBatch", "EditPlan", "EditSpec", "EditStepInputs",
    "compile_edit", "needleman_wunsch", "refine_alignment", "replace_mapper", "step_limits",
    "word_key",
]
