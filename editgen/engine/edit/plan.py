"""EditPlan: an EditSpec compiled against a tokenizer into per-token arrays (numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from editgen.engine.edit.alignment import refine_mapper, replace_mapper
from editgen.engine.edit.released_mappers import released_refine, released_replace
from editgen.engine.edit.settings import cross_window_steps, reweight_factors
from editgen.engine.edit.spec import DEFAULT_WINDOW, EditSpec
from editgen.engine.edit.words import named_tokens
from editgen.engine.tokenizer import TextTokenizer, TokenizedPrompt
from editgen.errors import InvalidRequestError


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
    mapper_kind: str = "p2p"  # settings.MAPPERS: which operators built `mapper` and `alphas`

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
            "mapper_kind": self.mapper_kind,
        }


def _real(prompt: TokenizedPrompt, T: int) -> np.ndarray:
    """float32 [T]: 1 on the prompt's real tokens (`</s>` included), 0 on pads."""
    return (np.arange(T) < prompt.length).astype(np.float32)


def _p2p_replace(source: TokenizedPrompt, target: TokenizedPrompt, T: int) -> tuple[np.ndarray, np.ndarray]:
    return replace_mapper(source, target, T), _real(target, T)


def _reweight(source: TokenizedPrompt, target: TokenizedPrompt, T: int) -> tuple[np.ndarray, np.ndarray]:
    """No base edit: the target is the source text, every real column from the source. The
    same under both mapper kinds: the released ReweightWordController copies the whole
    source map (`</s>` included) before scaling (controllers.py:88)."""
    real = _real(target, T)
    return np.diag(real), real


# (op, mapper kind) -> (source, target, T) -> (mapper float32 [T, T], alpha float32 [T])
BASE_EDITS = {
    ("replace", "p2p"): _p2p_replace,
    ("refine", "p2p"): refine_mapper,
    ("reweight", "p2p"): _reweight,
    ("replace", "editgen-code"): released_replace,
    ("refine", "editgen-code"): released_refine,
    ("reweight", "editgen-code"): _reweight,
}


def compile_edit(spec: EditSpec, tokenizer: TextTokenizer, num_layers: int) -> EditPlan:
    source, target = tokenizer.encode(spec.source), tokenizer.encode(spec.target)
    T = tokenizer.max_tokens
    mapper, alphas = BASE_EDITS[spec.op, spec.mapper](source, target, T)

    weights = np.ones(T, dtype=np.float32)
    bounds = np.tile(np.asarray(spec.windows[DEFAULT_WINDOW], dtype=np.float64), (T, 1))  # [T, 2]
    for t, c in _per_token("word_weights", spec.word_weights, target).items():
        weights[t] = c
    # A word literally named "default" gets the default window.
    named = {k: v for k, v in spec.windows.items() if k != DEFAULT_WINDOW}
    for t, window in _per_token("windows", named, target).items():
        bounds[t] = window
    weights = reweight_factors(weights, list(spec.word_weights.values()), spec.reweight_mode)

    arrays = dict(mapper=mapper, alphas=alphas.astype(np.float32), weights=weights,
                  window_bounds=bounds,
                  cross_blend=spec.cross_schedule.layer_values(num_layers),
                  self_blend=spec.self_schedule.layer_values(num_layers),
                  self_window=np.asarray(spec.self_window, dtype=np.float64))
    for a in arrays.values():
        a.flags.writeable = False
    return EditPlan(op=spec.op, source=source, target=target, setting=spec.setting,
                    reweight_mode=spec.reweight_mode, mapper_kind=spec.mapper, **arrays)


def _per_token(what: str, values: dict, target: TokenizedPrompt) -> dict[int, object]:
    """{token: value} of named words or word parts; a token named twice (a word and a part
    of it) is refused: which value it takes would depend on the order of the names."""
    out: dict[int, object] = {}
    owner: dict[int, str] = {}
    for name, value in values.items():
        for t in named_tokens(what, name, target):
            if t in owner and owner[t] != name:
                raise InvalidRequestError(f"{what}: {owner[t]!r} and {name!r} both name the token "
                                          f"{target.pieces[t]!r}: name one of them")
            out[t], owner[t] = value, name
    return out


def _prompt_json(p: TokenizedPrompt) -> dict:
    return {"text": p.text, "ids": p.ids[: p.length].tolist(), "pieces": list(p.pieces),
            "decoded": list(p.decoded), "words": list(p.words), "word_of_token": list(p.word_of_token),
            "length": p.length}
