"""Reference backend: the exported modules run eagerly in torch (CPU or CUDA)."""

from __future__ import annotations

import numpy as np

from editgen.engine.backend import StepOutputs


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
        self._step = DecoderStep(self.model).eval()
        self._cross = CrossKV(self.model).eval()

    def _t(self, a: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def encode_text(self, ids, mask):
        with self._torch.inference_mode():
            out = self.model.text_encoder(input_ids=self._t(ids), attention_mask=self._t(mask))
        return out.last_hidden_state.float().cpu().numpy()

    def cross_kv(self, hidden, mask):
        with self._torch.inference_mode():
            k, v = self._cross(self._t(hidden), self._t(mask))
        return k.cpu().numpy(), v.cpu().numpy()

    def step(self, codes, position, kv_cache, cross_k, cross_v, text_mask, edit) -> StepOutputs:
        t = self._t
        with self._torch.inference_mode():
            # Per-layer views of the runtime's buffers (kv[i, 0] is contiguous): no copy on CPU.
            kv, ck, cv = t(kv_cache), t(cross_k), t(cross_v)
            logits, new_kv, probs = self._step(
                t(codes), self._torch.tensor(position, device=self.device), kv[:, 0].unbind(0),
                kv[:, 1].unbind(0), ck.unbind(0), cv.unbind(0), t(text_mask), t(edit.src_row), t(edit.mapper),
                t(edit.alpha), t(edit.weight), t(edit.window), t(edit.blend), t(edit.use_captured), t(edit.captured))
        return StepOutputs(logits.cpu().numpy(), new_kv.cpu().numpy(), probs.cpu().numpy())

    def decode_audio(self, codes):
        with self._torch.inference_mode():
            # EnCodec takes [chunks=1, n, K, frames] and gives [n, channels=1, samples].
            audio = self.model.audio_encoder.decode(self._t(codes)[None], [None])[0]
        return audio[:, 0].float().cpu().numpy()  # [n, 1, samples] -> [n, samples]

    def encode_audio(self, wav):
        with self._torch.inference_mode():
            x = self._t(wav.astype(np.float32))[None, None]  # [1, 1, samples]
            enc = self.model.audio_encoder.encode(x, bandwidth=max(self.model.audio_encoder.config.target_bandwidths))
        return enc.audio_codes[0, 0].cpu().numpy().astype(np.int64)  # [K, frames]

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
