"""Triton backend: the decoder step with the fused attention kernels of `editgen.kernels`
(backend contract v3, editgen.engine.contract), the weight matmuls in torch.

Per step and layer: layer norm, q/k/v projections (torch), the split-K decode
self-attention kernel over each row's own length, with the source's probabilities
injected (b = self_blend[:, i] * self_window) and this position's K/V written into the
pool by the kernel; out projection, layer norm, cross q projection, the edited
cross-attention kernel (the Prompt-to-Prompt edit inside, maps stored only when a row
asks); out projection, FFN, final norm, LM head. The exact math is DecoderStep's
(docs/design.md, "The edit"): parity with the torch backend is tested.

Memory: the KV slot pool [layers, 2, slots, heads, positions, head_dim] and the cross
K/V [layers, slots, heads, T, head_dim] live on the backend's device in the dtype chosen
at construction (float32, float16 or bfloat16), grown by whole slots at admit (never in
a step); q and this step's K/V enter the kernels in that dtype too, and the kernels do
their math in fp32 (the text mask goes in as 0/1, so no fp32-min bias meets a half
tensor). Weights, the residual stream, layer norms and logits stay fp32.

Where it runs: on CUDA when torch sees a GPU (the kernels compile on first use), else on
CPU only under Triton's interpreter (TRITON_INTERPRET=1 set before Python starts): a
correctness path, slow (every program interpreted in numpy). Nothing here has run on a
GPU yet; the kernels alone are tested there by tests/test_triton_kernels.py's gpu tests.

Per step only small arrays cross to the host: the backend samples on its device
(`samples_on_device`: CFG, greedy or top-k with the rows' uniforms, device_sampling.py),
so the codes [N, K] come back instead of the logits, and maps for plots come back as their
mean over layers and heads ([1, M, 1, T]) when that is all the step's rows want.

Not here: CUDA graph capture of the step per row-count bucket (nothing here can run it).
"""

from __future__ import annotations

import copy
import os

import numpy as np

from editgen.engine.backends.device_sampling import sample_codes
from editgen.engine.backends.slots import SlotTable
from editgen.engine.backends.torch_pools import TorchPools
from editgen.engine.contract import StepBatch, StepOutputs
from editgen.errors import InvalidRequestError

DTYPES = ("float32", "float16", "bfloat16")
NO_DEVICE = ("the triton backend needs a CUDA GPU, and torch sees none; on CPU it runs only under Triton's "
             "interpreter (slow, for checking results): set TRITON_INTERPRET=1 before starting")


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_device(device=None):
    """The torch device the backend runs on: CUDA when available (or asked), CPU only
    under the interpreter. One-line InvalidRequestError otherwise (the CLI: exit 2)."""
    import torch

    try:
        import triton  # noqa: F401
    except ImportError:
        raise InvalidRequestError("the triton backend needs the triton package: pip install 'editgen[kernels]' "
                                  "(Linux only)") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(f"the triton backend was asked for {device}, and torch sees no CUDA device")
    if device.type == "cpu" and not interpreted():
        raise InvalidRequestError(NO_DEVICE)
    if device.type not in ("cpu", "cuda"):
        raise InvalidRequestError(f"the triton backend runs on cuda (or cpu under the interpreter), not {device}")
    return device


class KernelBackend(TorchPools):
    name = "triton"
    samples_on_device = True

    def __init__(self, loaded, device=None, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise InvalidRequestError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        device = resolve_device(device)
        import torch

        from editgen.kernels import cross_attention, decode_attention
        from editgen.model.step_module import CrossKV, DecoderStep

        if device.type == "cpu" and type(cross_attention._edited_cross_kernel).__name__ != "InterpretedFunction":
            raise InvalidRequestError("TRITON_INTERPRET=1 was set after the Triton kernels were loaded: set it "
                                      "before starting Python")
        self._torch = torch
        self._cross_attention = cross_attention.edited_cross_attention
        self._self_attention = decode_attention.decode_self_attention
        self.loaded = loaded
        self.shapes = loaded.shapes
        self.tokenizer = loaded.tokenizer
        self.device = device
        self.dtype = getattr(torch, dtype)
        # The loaded model stays where it is (other backends may share it): on CPU its
        # weights are used in place, on a GPU a copy is moved there.
        self.model = loaded.model if device.type == "cpu" else copy.deepcopy(loaded.model).to(device)
        # DecoderStep's tensors and modules (embedding tables, positions, layers, LM head)
        # and its _linear: the same ops as the torch backend outside the attention. On CPU
        # every weight matmul runs one row at a time (row_invariant), so a row's numbers
        # do not depend on the rows that share its step; on CUDA one GEMM per matmul.
        self._dec = DecoderStep(self.model, row_invariant=device.type == "cpu").eval()
        self._cross = CrossKV(self.model).eval()
        self.slots: SlotTable | None = None
        self._kv = self._cross_k = self._cross_v = None
        self._gathered = None  # (slots key, cross K, cross V, text mask) of the last step's rows

    # -- pools (TorchPools; every position the model has: the kernels read each row's own
    # length, never the capacity) ------------------------------------------------------

    def open(self, max_slots: int) -> None:
        self._gathered = None
        super().open(max_slots)

    def admit(self, slots, hidden, mask, edit) -> None:
        self._gathered = None  # these slots' cross K/V change
        super().admit(slots, hidden, mask, edit)

    # -- the step -----------------------------------------------------------------------

    def _check(self, batch: StepBatch, e) -> None:
        """What only the kernels need (SlotTable.batch_edit made the slot checks): a
        position inside the pool, a self-injected row at its source's."""
        if batch.positions.max() >= self.shapes.max_positions:
            raise RuntimeError(f"position {int(batch.positions.max())} past the model's {self.shapes.max_positions}")
        injected = (e.self_blend * e.self_window[:, None]).any(axis=1)
        if np.any(injected & (batch.positions[e.src_row] != batch.positions)):
            raise RuntimeError("a self-injected row and its source row must be at one position")

    def _rows_cross(self, slots: np.ndarray):
        """Cross K/V [layers, R, heads, T, head_dim] and the text mask [R, T] (0/1, fp32) of
        the batch rows, gathered from the pools once and kept while the step's rows stay
        the same slots (the usual case: requests join and leave only now and then)."""
        key = slots.tobytes()
        if self._gathered is None or self._gathered[0] != key:
            index = self._t(slots)
            mask = self._t(self.slots.text_mask[slots].astype(np.float32))
            self._gathered = (key, self._cross_k[:, index], self._cross_v[:, index], mask)
        return self._gathered[1:]

    def step(self, batch: StepBatch) -> StepOutputs:
        # Rows: exactly the batch's R rows, in batch order, not the pool's slots 0..n-1 as
        # the ORT and torch backends run them (SlotTable.expand). The self-attention
        # kernel takes each row's slot and position and reads/writes the pool there, and
        # the cross-attention rows are gathered per row, so there is no contiguous prefix
        # to keep and no padding row to compute; src_row indexes batch rows, as the kernels
        # take it. Nothing sets a minimum row count: on CPU every weight matmul runs a row
        # at a time and both kernels run one program per (row, head), so one row alone
        # gives the same bits as with any others (tested).
        torch, t = self._torch, self._t
        e = self.slots.batch_edit(batch)  # EditStepInputs of the batch rows
        self._check(batch, e)
        s, d = self.shapes, self._dec
        R, H, D, L = batch.rows, s.num_heads, s.head_dim, s.num_layers
        with torch.inference_mode():
            slots, positions, src = t(batch.slots), t(batch.positions), t(e.src_row)
            cross_k, cross_v, text_mask = self._rows_cross(np.asarray(batch.slots, np.int64))
            mapper, alpha, weight, window = t(e.mapper), t(e.alpha), t(e.weight), t(e.window)
            use_captured, captured = t(e.use_captured), t(e.captured)  # captured: [layers, R, heads, T]
            keep = t(e.blend.T)  # [layers, R]: a_i per layer, each row of it contiguous
            self_b = t((e.self_blend * e.self_window[:, None]).T)  # [layers, R]
            want = np.flatnonzero(batch.want_maps)
            probs = torch.empty(L, R, H, s.max_text_tokens, device=self.device) if want.size else None

            # codes: [R, K] -> the sum of the K codebook embeddings + the position's: [R, 1, hidden]
            codes = t(batch.codes)
            offsets = torch.arange(s.num_codebooks, device=self.device) * d.embed.shape[1]
            x = d.embed.reshape(-1, d.embed.shape[2])[codes + offsets].sum(dim=1)
            x = (x + d.positions[positions])[:, None, :]
            for i, layer in enumerate(d.layers):
                a = layer.self_attn
                h = layer.self_attn_layer_norm(x)
                q, k, v = (d._linear(p, h).view(R, H, D).to(self.dtype) for p in (a.q_proj, a.k_proj, a.v_proj))
                out = self._self_attention(q, k, v, self._kv[i, 0], self._kv[i, 1], slots, positions, src,
                                           self_b[i], d.scaling)  # [R, H, D]; k, v written at (slot, position)
                x = x + d._linear(a.out_proj, out.float().reshape(R, 1, H * D))

                c = layer.encoder_attn
                h = layer.encoder_attn_layer_norm(x)
                q = d._linear(c.q_proj, h).view(R, H, D).to(self.dtype)
                out, _ = self._cross_attention(q, cross_k[i], cross_v[i], text_mask, src, use_captured, captured[i],
                                               mapper, alpha, weight, window, keep[i], d.scaling,
                                               probs=None if probs is None else probs[i])
                x = x + d._linear(c.out_proj, out.float().reshape(R, 1, H * D))

                h = layer.final_layer_norm(x)
                x = x + d._linear(layer.fc2, layer.activation_fn(d._linear(layer.fc1, h)))
            x = d.final_norm(x)
            logits = d._linear(d.lm_head, x).view(R, s.num_codebooks, s.vocab_size).float()
            if probs is None:
                maps = np.zeros((L, 0, H, s.max_text_tokens), np.float32)
            elif batch.map_means_only:
                maps = probs[:, t(want)].mean(dim=(0, 2), keepdim=True).cpu().numpy()  # [1, M, 1, T]
            else:
                maps = probs[:, t(want)].cpu().numpy()
            if batch.sampling is not None:
                out = StepOutputs(None, maps, codes=sample_codes(logits, batch.sampling).cpu().numpy())
            else:
                out = StepOutputs(logits.cpu().numpy(), maps)
        self.slots.written(batch)
        return out

    def close(self):
        super().close()
        self._gathered = None
        if self.device.type == "cuda":  # the device copy of the weights goes too (CPU shares the loaded model)
            self.model = self._dec = self._cross = None
