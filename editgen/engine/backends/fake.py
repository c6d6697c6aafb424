"""A numpy backend with the contract's behaviour and none of the model: for testing the
engine core, the scheduler and the invariants fast and without torch.

Its "model" is a deterministic function of what a real step depends on, so that the
bugs the tests look for change its output: a row's logits depend on its slot's text, on
every code its cache holds up to its position (a cache written at the wrong slot or
position, or not at all, changes them), on its position, and, for an edited row, on its
source row's text and, with self-injection, on the source row's cache (a src_row pointing
at the wrong batch row changes them). Maps are
the row's attention over its text tokens, after the same edit arithmetic."""

from __future__ import annotations

import numpy as np

from editgen.engine.backends.slots import SlotTable
from editgen.engine.config import ModelShapes
from editgen.engine.contract import StepBatch, StepOutputs
from editgen.engine.tokenizer import TextTokenizer

FAKE_SHAPES = ModelShapes(num_layers=2, hidden_size=16, num_heads=2, num_codebooks=4, vocab_size=32,
                          pad_token_id=32, max_positions=2048, text_hidden_size=8)


class FakeBackend:
    name = "fake"
    prefix_decode_exact = True  # its "codec" maps each frame to its samples alone

    def __init__(self, shapes: ModelShapes = FAKE_SHAPES, tokenizer: TextTokenizer | None = None):
        self.shapes = shapes
        self.tokenizer = tokenizer or TextTokenizer.preset(shapes.max_text_tokens)
        rng = np.random.default_rng(0)
        s = shapes
        self._embed = rng.standard_normal((s.pad_token_id + 1 + 1024, s.text_hidden_size)).astype(np.float32)
        self._project = rng.standard_normal((s.text_hidden_size, s.num_codebooks * s.vocab_size)).astype(np.float32)
        self.slots: SlotTable | None = None
        self.steps = 0  # backend.step calls (tests read it)
        self.fail_at_step: int | None = None  # raise RuntimeError on this step call

    def open(self, max_slots: int) -> None:
        s = self.shapes
        self.slots = SlotTable(s, max_slots)
        self._history = np.zeros((max_slots, s.max_positions, s.num_codebooks), np.int64)  # the "KV cache"
        self._text = np.zeros((max_slots, s.text_hidden_size), np.float32)

    def encode_text(self, ids, mask):
        return (self._embed[ids % self._embed.shape[0]] * mask[..., None]).astype(np.float32)

    def admit(self, slots, hidden, mask, edit) -> None:
        self.slots.admit(slots, mask, edit)
        self._text[slots] = hidden.sum(axis=1)  # [R, text_hidden]
        self._history[slots] = 0

    def release(self, slots) -> None:
        self.slots.release(slots)

    def step(self, batch: StepBatch) -> StepOutputs:
        self.steps += 1
        if self.fail_at_step == self.steps:
            raise RuntimeError("fake backend failure")
        e = self.slots.batch_edit(batch)  # the same checks as the real backends (admitted, positions)
        s = self.shapes
        slots, positions = batch.slots, batch.positions
        self._history[slots, positions] = batch.codes
        # A rolling summary of each row's cache up to and including its position.
        steps = np.arange(s.max_positions)[None, :, None]
        weights = np.where(steps <= positions[:, None, None], np.cos(steps * 0.37 + 1.0), 0.0)
        memory = (self._history[slots] * weights).sum(axis=(1, 2))  # [R]
        # Self-injection mixes in the source row's cache summary (same form as the real step).
        self_b = (e.self_blend * e.self_window[:, None]).mean(axis=1)  # [R]
        memory = memory - self_b * (memory - memory[e.src_row])
        edited = (e.window.max(axis=1) > 0) & (e.use_captured < 0.5)  # [R]
        text = self._text[slots] + np.where(edited[:, None], 0.5 * self._text[slots][e.src_row], 0.0)
        logits = 0.05 * (text @ self._project)  # [R, K * vocab]
        logits = logits + 2.0 * np.sin(memory[:, None] * 0.01 + positions[:, None] * 0.1 + np.arange(logits.shape[1]))
        logits = logits.reshape(len(slots), s.num_codebooks, s.vocab_size).astype(np.float32)
        want = batch.want_maps
        scores = np.sin(self._text[slots][want, :1] + np.arange(s.max_text_tokens) * 0.1)  # [M, T]
        own = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
        inj = np.einsum("mt,mtu->mu", own, e.mapper[want]) * e.weight[want]
        p = e.window[want] * inj + (1 - e.window[want]) * own
        maps = np.broadcast_to(p[None, :, None, :], (s.num_layers, int(want.sum()), s.num_heads, s.max_text_tokens))
        self.slots.written(batch)
        return StepOutputs(logits=logits, cross_attn=np.ascontiguousarray(maps, dtype=np.float32))

    def decode_audio(self, codes):
        s = self.shapes
        hop, C = s.sample_rate // s.frame_rate, s.audio_channels
        per_channel = codes.reshape(codes.shape[0], s.channel_codebooks, C, -1).sum(axis=1)  # [n, C, frames]
        return np.repeat(np.sin(per_channel.astype(np.float32)), hop, axis=-1)  # [n, C, frames * hop]

    def encode_audio(self, wav):
        hop = self.shapes.sample_rate // self.shapes.frame_rate
        frames = wav.shape[-1] // hop  # wav: [channels, samples]
        return np.zeros((self.shapes.num_codebooks, frames), np.int64) + (np.arange(frames) % self.shapes.vocab_size)

    def close(self) -> None:
        self.slots = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
