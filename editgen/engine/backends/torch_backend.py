"""Reference backend: the model's step module run eagerly in torch (CPU or CUDA), with
the slot pool on the backend's device (backend contract v3, editgen.engine.contract).

The pool holds every position the model has (gpt-fast's `setup_caches`): [layers, 2,
slots, heads, positions, head_dim], grown by whole slots when a higher slot is admitted
(a copy, between steps, never per step); a step reads the view
`[:rows, :, :attended]` of it and writes each row's new K/V at (slot, position) with one
index_put inside the step. Per-step host->device traffic is the StepBatch (codes,
positions, edit tensors); the logits and requested maps come back."""

from __future__ import annotations


from editgen.engine.backends.slots import SlotTable
from editgen.engine.contract import MIN_ROWS
from editgen.engine.backends.torch_pools import TorchPools
from editgen.engine.contract import StepBatch, StepOutputs, attended_positions


class TorchBackend(TorchPools):
    name = "torch"
    min_slots = MIN_ROWS  # a step runs slots 0..n-1 with n >= MIN_ROWS (slots.py)

    def __init__(self, loaded, device: str = "cpu"):
        import torch

        from editgen.model.step_module import CrossKV, DecoderStep

        self._torch = torch
        self.loaded = loaded
        self.model = loaded.model.to(device)
        self.shapes = loaded.shapes
        self.tokenizer = loaded.tokenizer
        self.device = device
        self.dtype = torch.float32
        self._step = DecoderStep(self.model, row_invariant=True).eval()
        self._cross = CrossKV(self.model).eval()
        self.slots: SlotTable | None = None
        self._kv = self._cross_k = self._cross_v = None

    def pool_positions(self) -> int:
        # A step reads a multiple of POSITION_BUCKET positions (batch invariance): room for the last one.
        return attended_positions(self.shapes.max_positions - 1)

    def step(self, batch: StepBatch) -> StepOutputs:
        torch, t = self._torch, self._t
        phys = self.slots.expand(batch)
        e = phys.edit
        n = phys.rows
        self._grow(n)
        with torch.inference_mode():
            kv = self._kv[:, :, :n, :, : phys.attended]  # view: [layers, 2, n, heads, attended, head_dim]
            ck, cv = self._cross_k[:, :n], self._cross_v[:, :n]
            logits, new_kv, probs = self._step(
                t(phys.codes), t(phys.positions), kv[:, 0].unbind(0), kv[:, 1].unbind(0), ck.unbind(0), cv.unbind(0),
                t(phys.text_mask), self._edit_tensors(e))
            slots, positions = t(batch.slots), t(batch.positions)
            # [layers, 2, n, heads, head_dim] -> the rows of the batch at their positions.
            self._kv[:, :, slots, :, positions] = new_kv[:, :, slots].permute(2, 0, 1, 3, 4)
            maps = probs[:, slots[t(batch.want_maps)]]
            out = StepOutputs(logits[slots].cpu().numpy(), maps.cpu().numpy())
        self.slots.written(batch)
        return out
