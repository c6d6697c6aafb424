"""EditPlan: an EditSpec compiled against a tokenizer into per-token arrays (numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.edit.alignment import refine_alignment, replace_mapper
from editgen.engine.edit.settings import cross_window_steps, reweight_factors
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
    weights: np.ndarray  # float32 [T] column factors of the reweight (1 = unchanged)
    # float64 [T, 2]: each token's cross window (start, end), fractions of the steps
    window_bounds: np.ndarray
    cross_blend: np.ndarray  # float32 [num_layers] a_i (1 = keep own map)
    self_blend: np.ndarray  # float32 [num_layers] b_i (0 = own self-attention)
    self_window: np.ndarray  # float64 [2] (start, end) of self-attention injection
    setting: str = ""
    reweight_mode: str = "p2p"

    @property
    def num_layers(self) -> int:
        return self.cross_blend.shape[0]

    def row_inputs(self) -> dict[str, np.ndarray]:
        """The target row's static step inputs, by EditStepInputs field name."""
        return {"mapper": self.mapper, "alpha": self.alphas, "weight": self.weights, "blend": self.cross_blend,
                "self_blend": self.self_blend}

    def window(self, step: int, num_steps: int) -> np.ndarray:
        """Cross window w_t at `step` of `num_steps`: float32 [T] (Prompt-to-Prompt's steps)."""
        lo, hi = cross_window_steps(self.window_bounds, num_steps).T
        return ((lo <= step) & (step < hi)).astype(np.float32)

    def to_json(self) -> dict:
        """Plain lists and numbers, for edit.json."""
        return {
            "op": self.op,
            "source": _prompt_json(self.source),
            "target": _prompt_json(self.target),
            "mapper": self.mapper.tolist(),
            "alphas": self.alphas.tolist(),
            "weights": self.weights.tolist(),
            "window_bounds": self.window_bounds.tolist(),
            "cross_blend": self.cross_blend.tolist(),
            "self_blend": self.self_blend.tolist(),
            "self_window": self.self_window.tolist(),
            "setting": self.setting,
            "reweight_mode": self.reweight_mode,
        }


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
    bounds = np.tile(np.asarray(spec.windows[DEFAULT_WINDOW], dtype=np.float64), (T, 1))  # [T, 2]
    for t, key in enumerate(token_keys):
        if key in spec.word_weights:
            weights[t] = spec.word_weights[key]
        if key in spec.windows:  # a word literally named "default" gets the default
            bounds[t] = spec.windows[key]
    weights = reweight_factors(weights, list(spec.word_weights.values()), spec.reweight_mode)

    arrays = dict(mapper=mapper, alphas=alphas.astype(np.float32), weights=weights,
                  window_bounds=bounds,
                  cross_blend=spec.cross_schedule.layer_values(num_layers),
                  self_blend=spec.self_schedule.layer_values(num_layers),
                  self_window=np.asarray(spec.self_window, dtype=np.float64))
    for a in arrays.values():
        a.flags.writeable = False
    return EditPlan(op=spec.op, source=source, target=target, setting=spec.setting,
                    reweight_mode=spec.reweight_mode, **arrays)


def _prompt_json(p: TokenizedPrompt) -> dict:
    return {"text": p.text, "ids": p.ids[: p.length].tolist(), "pieces": list(p.pieces),
            "words": list(p.words), "word_of_token": list(p.word_of_token),
            "length": p.length}
