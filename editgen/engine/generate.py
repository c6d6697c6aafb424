"""The generation loop: one for every backend, plain generation and every edit.

    text -> T5 -> cross K/V (once) -> for each position: step, write KV, guide, sample,
    override (teacher forcing, region copy), record maps -> delay pattern off -> codes

Rows are [source, target_1..n] conditional, then the same rows with null text when
classifier-free guidance is on (docs/design.md)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

import numpy as np

from editgen.engine.backend import Backend, KVCache
from editgen.engine.delay import DelayPattern
from editgen.engine.options import GenerationOptions
from editgen.engine.progress import progress as progress_bar
from editgen.engine.sampling import Sampler, classifier_free_guidance
from editgen.engine.tokenizer import TokenizedPrompt


class StepEdits(Protocol):
    """Edit tensors for each step (an EditBatch, or identity for plain generation)."""

    def inputs(self, step: int, num_steps: int): ...


# Called with (position, codes [rows_cond, K]) after sampling; may overwrite rows in place.
CodeOverride = Callable[[int, np.ndarray], None]
# Called with (step, cross_attn [layers, rows_cond, heads, T]) after each step.
MapRecorder = Callable[[int, np.ndarray], None]


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
    progress: bool = True,
) -> GenerationResult:
    shapes = backend.shapes
    frames = options.frames(shapes)
    steps = shapes.steps_for_frames(frames)
    n = len(prompts)
    rows = 2 * n if options.cfg else n
    pattern = DelayPattern(shapes.num_codebooks, steps + 1, shapes.pad_token_id)

    ids = np.stack([p.ids for p in prompts])  # [n, T]
    mask = np.stack([p.mask for p in prompts])
    hidden = backend.encode_text(ids, mask)  # [n, T, text_hidden]
    if options.cfg:  # null conditioning: zero states, zero mask (as transformers)
        hidden = np.concatenate([hidden, np.zeros_like(hidden)])
        mask = np.concatenate([mask, np.zeros_like(mask)])
    cross_k, cross_v = backend.cross_kv(hidden, mask)
    if edits is None:
        from editgen.engine.edit import EditBatch

        edits = EditBatch.plain(rows_cond=n, cfg=options.cfg, shapes=shapes)

    cache = KVCache(shapes, rows, capacity=steps)
    sampler = Sampler(n, seed=options.seed, top_k=options.top_k, temperature=options.temperature,
                      greedy=options.greedy)
    sequence = np.full((n, shapes.num_codebooks, steps + 1), shapes.pad_token_id, dtype=np.int64)
    frame = np.empty((rows, shapes.num_codebooks), dtype=np.int64)  # step input, reused

    for t in progress_bar(range(steps), enabled=progress, desc="decoding", unit="step"):
        frame[:n] = pattern.apply(sequence[:, :, t], t)
        frame[n:] = frame[:n]
        out = backend.step(frame, t, cache.array, cross_k, cross_v, mask, edits.inputs(t, steps))
        cache.write(t, out.new_kv)
        logits = classifier_free_guidance(out.logits, options.guidance_scale) if options.cfg else out.logits
        codes = sampler(logits)  # [n, K]
        for override in overrides:
            override(t + 1, codes)
        sequence[:, :, t + 1] = codes
        for record in recorders:
            record(t, out.cross_attn[:, :n])
    return GenerationResult(pattern.to_frames(sequence), pattern)
