"""What the torch and triton backends share: the KV slot pool and cross K/V pool as torch
tensors on the backend's device, admission (cross K/V written once), the text encoder
and EnCodec through the loaded model. A subclass sets, in its __init__: `_torch`,
`model`, `shapes`, `tokenizer`, `device`, `dtype` (the pools' torch dtype), `_cross`
(CrossKV), and as class attributes how many positions its pool holds and the fewest
slots it allocates; it writes its own `step`."""

from __future__ import annotations

import numpy as np

from editgen.engine.backends.slots import SlotTable
from editgen.engine.edit.step_inputs import EditStepInputs


class TorchPools:
    min_slots = 1  # admit sizes the pool for at least this many slots

    def pool_positions(self) -> int:
        """Positions of the self-attention pool (every position the model has, or more)."""
        return self.shapes.max_positions

    def _t(self, a: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _edit_tensors(self, edit: EditStepInputs):
        """A step's edit inputs on the backend's device, as DecoderStep's parts take them."""
        from editgen.model.edit_tensors import EditTensors

        return EditTensors.from_inputs(edit, self._t)

    def open(self, max_slots: int) -> None:
        self.slots = SlotTable(self.shapes, max_slots)
        self._kv = self._cross_k = self._cross_v = None
        self._grow(0)

    def _grow(self, slots: int) -> None:
        """Room for slots 0..slots-1 (rounded up to 4), keeping what the pools hold: a copy
        at admission, never in a step."""
        s, torch = self.shapes, self._torch
        have = 0 if self._kv is None else self._kv.shape[2]
        if self._kv is not None and slots <= have:
            return
        new = -(-slots // 4) * 4
        kv = torch.zeros(s.num_layers, 2, new, s.num_heads, self.pool_positions(), s.head_dim, dtype=self.dtype,
                         device=self.device)
        ck = torch.zeros(s.num_layers, new, s.num_heads, s.max_text_tokens, s.head_dim, dtype=self.dtype,
                         device=self.device)
        cv = torch.zeros_like(ck)
        if have:
            kv[:, :, :have] = self._kv
            ck[:, :have], cv[:, :have] = self._cross_k, self._cross_v
        self._kv, self._cross_k, self._cross_v = kv, ck, cv

    def encode_text(self, ids, mask):
        with self._torch.inference_mode():
            out = self.model.text_encoder(input_ids=self._t(ids), attention_mask=self._t(mask))
        return out.last_hidden_state.float().cpu().numpy()

    def admit(self, slots, hidden, mask, edit) -> None:
        self.slots.admit(slots, mask, edit)
        self._grow(max(int(np.max(slots)) + 1, self.min_slots))
        index = self._t(np.asarray(slots, np.int64))
        with self._torch.inference_mode():
            k, v = self._cross(self._t(np.asarray(hidden, np.float32)), self._t(mask))  # [layers, R, heads, T, head_dim]
            self._cross_k[:, index] = k.to(self.dtype)
            self._cross_v[:, index] = v.to(self.dtype)

    def release(self, slots) -> None:
        self.slots.release(slots)

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
