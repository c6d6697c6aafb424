"""Prompt-to-Prompt edits as arrays: EditSpec -> EditPlan (compile_edit) -> a request's
EditBatch: static rows (EditBatch.row_inputs, admitted once) and what changes per step
(EditBatch.step_edits). numpy only; see docs/design.md, "The edit"."""

from editgen.engine.edit.alignment import needleman_wunsch, refine_alignment, replace_mapper
from editgen.engine.edit.blend import LayerSchedule
from editgen.engine.edit.plan import EditPlan, compile_edit
from editgen.engine.edit.settings import DEFAULT_SETTING, REWEIGHT_MODES, SETTINGS
from editgen.engine.edit.spec import OPS, EditSpec, word_key
from editgen.engine.edit.step_inputs import EditBatch, EditStepInputs, StepEdits

__all__ = [
    "DEFAULT_SETTING", "OPS", "REWEIGHT_MODES", "SETTINGS", "EditBatch", "EditPlan", "EditSpec",
    "EditStepInputs", "LayerSchedule", "compile_edit", "needleman_wunsch", "refine_alignment",
    "replace_mapper", "StepEdits", "word_key",
]
