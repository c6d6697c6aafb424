"""The step's edit inputs as torch tensors: one argument of DecoderStep, keyed by the
fields of the engine's EditStepInputs (editgen/engine/edit/step_inputs.py), in their order.

The fields are read from EditStepInputs, not listed here, so a new per-row edit input
reaches DecoderStep, the exported graph's inputs (StepGraph flattens this tuple in the
contract's order, editgen.engine.contract.STEP_EDIT_INPUTS) and the torch and triton
backends without touching their signatures; only the attention parts that use it change.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable

import numpy as np
import torch

from editgen.engine.config import ModelShapes
from editgen.engine.edit.step_inputs import EditStepInputs

EDIT_FIELDS = tuple(f.name for f in dataclasses.fields(EditStepInputs))


class EditTensors(collections.namedtuple("EditTensors", EDIT_FIELDS)):
    """One tensor per EditStepInputs field, same name, shape and dtype (rows: the step's rows).
    A tuple in the contract's order: `EditTensors(*flat)` and `(*edit,)` convert."""

    __slots__ = ()

    @classmethod
    def from_inputs(cls, inputs: EditStepInputs, to_tensor: Callable[[np.ndarray], torch.Tensor]) -> "EditTensors":
        return cls(*(to_tensor(getattr(inputs, name)) for name in EDIT_FIELDS))

    @classmethod
    def identity(cls, rows: int, shapes: ModelShapes) -> "EditTensors":
        """The engine's identity edit (EditStepInputs.identity): every row its own maps."""
        inputs = EditStepInputs.identity(rows, shapes.max_text_tokens, shapes.num_layers, shapes.num_heads)
        return cls.from_inputs(inputs, torch.from_numpy)

    @classmethod
    def partial(cls, **given: torch.Tensor) -> "EditTensors":
        """Some fields only, the others None: for a graph that reads only some of them (the
        segmented step's cross-attention)."""
        return cls(**{**dict.fromkeys(EDIT_FIELDS), **given})
