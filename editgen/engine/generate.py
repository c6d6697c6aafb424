"""Submit one request and step until it is done: what `generate`, `edit`, `capture` and
the CLI run. The loop itself is the engine core's (editgen.engine.core)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from editgen.engine.contract import Backend
from editgen.engine.core import run_alone
from editgen.engine.delay import DelayPattern
from editgen.engine.options import GenerationOptions
from editgen.engine.requests import CodeOverride, MapRecorder, Request, StepEdits
from editgen.engine.tokenizer import TokenizedPrompt


@dataclasses.dataclass
class GenerationResult:
    codes: np.ndarray  # [rows_cond, K, frames] int64
    pattern: DelayPattern


def generate_codes(
    backend: Backend,
    prompts: Sequence[TokenizedPrompt],
    options: GenerationOptions,
    *,
    edits: StepEdits | None = None,
    overrides: Sequence[CodeOverride] = (),
    recorders: Sequence[MapRecorder] = (),
) -> GenerationResult:
    """Rows are [prompts...] conditional, then the same with null text when guidance is on."""
    request = Request(backend.shapes, prompts, options, edits=edits, overrides=overrides, recorders=recorders)
    run_alone(backend, request)
    return GenerationResult(request.codes(), request.pattern)
