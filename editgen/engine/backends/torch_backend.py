"""Reference backend: the model's step module run eagerly in torch (CPU or CUDA), with
the slot pool on the backend's device (backend contract v3, editgen.engine.contract).

The pool holds every position the model has (gpt-fast's `setup_caches`): [layers, 2,
slots, heads, positions, head_dim], grown by whole slots when a higher slot is admitted
(a copy, between steps, never per step); a step reads the view
`[:rows, :, :attended]` of it and writes each row's new K/V at (slot, position) with one
index_put inside the step. Per-step host->device traffic is the StepBatch (codes,
positions, edit tensors); the logits and requested maps come back."""

from __future__ import annotations

import numpy as np

from editgen.engine.backends.slots import SlotTable
from editgen.engine.contract import StepBatch, StepOutputs, attended_positions


class TorchBackend:
    name = "torch"

    def __init__(self, loaded, device: str = "cpu"):
        import torch

        from editgen.model.step_module import CrossKV, DecoderStep

        self._torch = torch
        self.loaded = loaded
        self.model = loaded.model.to(device)
        self.shapes = loaded.shapes
        self.tokenizer = loaded.tokenizer
        self.device = device
        self._step = DecoderStep(self.model, row_invariant=True).eval()
        self._cross = CrossKV(self.model).eval()
        self.slots: SlotTable | None = None
        self._kv = self._cross_k = self._cross_v = None

    def _t(self, a: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def open(self, max_slots: int) -> None:
        s, torch = self.shapes, self._torch
        self.slots = SlotTable(s, max_slots)
        self._kv = self._cross_k = self._cross_v = None
        self._grow(0)

    def _grow(self, slots: int) -> None:
        """Room for slots 0..slots-1 (rounded up to 4), keeping what the pool holds."""
        s, torch = self.shapes, self._torch
        have = 0 if self._kv is None else self._kv.shape[2]
        if self._kv is not None and slots <= have:
            return
        new = -(-slots // 4) * 4
        positions = attended_positions(s.max_positions - 1)
        kv = torch.zeros(s.num_layers, 2, new, s.num_heads, positions, s.head_dim, device=self.device)
        ck = torch.zeros(s.num_layers, new, s.num_heads, s.max_text_tokens, s.head_dim, device=self.device)
        cv = torch.zeros_like(ck)
        if have:
            kv[:, :, :have] = self._kv
            ck[:, :have], cv[:, :have] = self._cross_k, self._cross_v
        self._kv, self._cross_k, self._cross_v = kv, ck, cv

    def encode_text(self, ids, mask):
        with self._torch.inference_mode():
            out = self.model.text_encoder(input_ids=self._t(ids), attention_mask=self._t(mask))
        return out.last_hidden_state.float().cpu().numpy()

    def admit(self, slots, hidden, mask) -> None:
        self.slots.admit(slots, mask)
        self._grow(max(int(np.max(slots)) + 1, 2))
        index = self._t(np.asarray(slots, np.int64))
        with self._torch.inference_mode():
            k, v = self._cross(self._t(np.asarray(hidden, np.float32)), self._t(mask))  # [layers, R, heads, T, head_dim]
            self._cross_k[:, index] = k
            self._cross_v[:, index] = v

    def release(self, slots) -> None:
        self.slots.release(slots)

    def step(self, batch: StepBatch) -> StepOutputs:
        torch, t = self._torch, self._t
        phys = self.slots.expand(batch)
        n, e = phys.rows, phys.edit
        self._grow(n)
        with torch.inference_mode():
            kv = self._kv[:, :, :n, :, : phys.attended]  # view: [layers, 2, n, heads, attended, head_dim]
            ck, cv = self._cross_k[:, :n], self._cross_v[:, :n]
            logits, new_kv, probs = self._step(
                t(phys.codes), t(phys.positions), kv[:, 0].unbind(0), kv[:, 1].unbind(0), ck.unbind(0), cv.unbind(0),
                t(phys.text_mask), t(e.src_row), t(e.mapper), t(e.alpha), t(e.weight), t(e.window), t(e.blend),
                t(e.use_captured), t(e.captured), t(e.self_blend), t(e.self_window))
            slots, positions = t(batch.slots), t(batch.positions)
            # [layers, 2, n, heads, head_dim] -> the rows of the batch at their positions.
            self._kv[:, :, slots, :, positions] = new_kv[:, :, slots].permute(2, 0, 1, 3, 4)
            maps = probs[:, slots[t(batch.want_maps)]]
            out = StepOutputs(logits[slots].cpu().numpy(), maps.cpu().numpy())
        self.slots.written(batch)
        return out

    def decode_audio(self, codes):
        from editgen.model.codec import decode_codes

        with self._torch.inference_mode():
            audio = decode_codes(self.model.audio_encoder, self._t(codes), self.shapes.audio_channels)
        return audio.float().cpu().numpy()  # [n, channels, samples]

    def encode_audio(self, wav):
        from editgen.model.codec import encode_audio

        codec = self.model.audio_encoder
        with self._torch.inference_mode():
            codes = encode_audio(codec, self._t(wav.astype(np.float32)), max(codec.config.target_bandwidths))
        return codes.cpu().numpy().astype(np.int64)  # [K, frames]

    def close(self):
        self._kv = self._cross_k = self._cross_v = None
        self.slots = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
