"""EditPlan: an EditSpec compiled against a tokenizer into per-token arrays (numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.edit.alignment import refine_alignment, replace_mapper
from editgen.engine.edit.spec import DEFAULT_WINDOW, EditSpec, word_key
from editgen.engine.tokenizer import TextTokenizer, TokenizedPrompt, split_words


@dataclasses.dataclass(frozen=True, eq=False)
class EditPlan:
    """One target's edit. T = tokenizer.max_tokens; arrays are read-only.

    Target pad positions (t >= target.length) have mapper column 0 and alpha 0 in every
    op, so they keep the row's own map (exactly 0 there).
    """

    op: str
    source: TokenizedPrompt
    target: TokenizedPrompt
    mapper: np.ndarray  # float32 [T, T] [source token, target token]
    alphas: np.ndarray  # float32 [T] 1 = from source (mapper), 0 = own map
    weights: np.ndarray  # float32 [T] reweight c (1 = unchanged)
    # float64 [T]: the user's fractions unrounded, so 0.3 of 10 steps is 3 steps, not 4
    window_fractions: np.ndarray
    blend: np.ndarray  # float32 [num_layers] a_i (1 = keep own map)

    @property
    def num_layers(self) -> int:
        return self.blend.shape[0]

    def window(self, step: int, num_steps: int) -> np.ndarray:
        """w_t at `step`: float32 [T], 1 while step < fraction * num_steps."""
        return (step < step_limits(self.window_fractions, num_steps)).astype(np.float32)

    def to_json(self) -> dict:
        """Plain lists and numbers, for edit.json."""
        return {
            "op": self.op,
            "source": _prompt_json(self.source),
            "target": _prompt_json(self.target),
            "mapper": self.mapper.tolist(),
            "alphas": self.alphas.tolist(),
            "weights": self.weights.tolist(),
            "window_fractions": self.window_fractions.tolist(),
            "blend": self.blend.tolist(),
        }


def step_limits(fractions: np.ndarray, num_steps: int, out: np.ndarray | None = None):
    """fraction * num_steps (float64 [T]); the window is on while step < this.

    Rounded to 1e-9 so float error does not add a step (0.3 * 10 = 3.0000000000000004).
    """
    out = np.multiply(fractions, num_steps, out=out)
    return np.round(out, 9, out=out)


def compile_edit(spec: EditSpec, tokenizer: TextTokenizer, num_layers: int) -> EditPlan:
    source, target = tokenizer.encode(spec.source), tokenizer.encode(spec.target)
    T = tokenizer.max_tokens
    real = (np.arange(T) < target.length).astype(np.float32)  # [T] 1 on target's tokens
    if spec.op == "replace":
        mapper, alphas = replace_mapper(source, target, T), real
    elif spec.op == "refine":
        index, alphas = refine_alignment(source, target, T)
        mapper = np.zeros((T, T), dtype=np.float32)
        aligned = np.flatnonzero(alphas == 1.0)
        mapper[index[aligned], aligned] = 1.0  # one-hot columns; 0 where alpha is 0
    else:  # reweight: target is the source text, tokens correspond one to one
        mapper, alphas = np.diag(real), real

    keys = [word_key(w) for w in split_words(target.text)]  # [words]
    token_keys = [None if w is None else keys[w] for w in target.word_of_token]  # [length]
    weights = np.ones(T, dtype=np.float32)
    fractions = np.full(T, spec.windows[DEFAULT_WINDOW], dtype=np.float64)
    for t, key in enumerate(token_keys):
        if key in spec.word_weights:
            weights[t] = spec.word_weights[key]
        if key in spec.windows:  # a word literally named "default" gets the default
            fractions[t] = spec.windows[key]

    arrays = dict(mapper=mapper, alphas=alphas.astype(np.float32), weights=weights,
                  window_fractions=fractions,
                  blend=spec.blend_schedule.alphas(num_layers))
    for a in arrays.values():
        a.flags.writeable = False
    return EditPlan(op=spec.op, source=source, target=target, **arrays)


def _prompt_json(p: TokenizedPrompt) -> dict:
    return {"text": p.text, "ids": p.ids[: p.length].tolist(), "pieces": list(p.pieces),
            "words": list(p.words), "word_of_token": list(p.word_of_token),
            "length": p.length}
