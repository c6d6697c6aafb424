"""Triton backend: DecoderStep with the fused attention kernels of `editgen.kernels` as its
attention parts (editgen.kernels.step_attention; backend contract v3,
editgen.engine.contract), the weight matmuls in torch.

Per step and layer: DecoderStep's layer norm and q/k/v projections, the split-K decode
self-attention kernel over each row's own length, with the source's probabilities
injected (b = self_blend[:, i] * self_window) and this position's K/V written into the
pool by the kernel; then DecoderStep's layer tail (out projection, layer norm, cross q
projection, the edited cross-attention kernel with the Prompt-to-Prompt edit inside and
maps stored only when a row asks, out projection, FFN), final norm and LM head. The
cross-attention kernel is Triton's, or with cross_attention="cuda-lib" the CUDA C++
library's (README, "CUDA C++ library"). The exact math is DecoderStep's (docs/design.md,
"The edit"): parity with the torch backend is tested.

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
import functools
import os

import numpy as np

from editgen.engine.backends.device_sampling import sample_codes
from editgen.engine.backends.slots import SlotTable
from editgen.engine.backends.torch_pools import TorchPools
from editgen.engine.contract import StepBatch, StepOutputs
from editgen.errors import InvalidRequestError

DTYPES = ("float32", "float16", "bfloat16")
CROSS_ATTENTION = ("triton", "cuda-lib")
CUDA_LIB_NEEDS_A_GPU = ("cross_attention='cuda-lib' runs the CUDA C++ library (libeditgen_kernels), which needs a "
                        "CUDA GPU, and this backend runs on the CPU: use cross_attention='triton'")
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


def _cuda_library(device, dtype: str):
    """The loaded CUDA C++ library for cross_attention="cuda-lib", or one-line InvalidRequestError."""
    from editgen.kernels import cuda_lib

    if device.type != "cuda":
        raise InvalidRequestError(CUDA_LIB_NEEDS_A_GPU)
    if dtype != "float32":
        raise InvalidRequestError(f"cross_attention='cuda-lib' takes float32 pools (the CUDA C++ kernel is fp32), "
                                  f"not {dtype}: pass dtype='float32'")
    try:
        return cuda_lib.load()
    except cuda_lib.CudaLibraryError as exc:
        raise InvalidRequestError(f"cross_attention='cuda-lib': {exc}") from None


class KernelBackend(TorchPools):
    """`cross_attention`: "triton" (the Triton kernel) or "cuda-lib" (the same edit in the
    CUDA C++ library, libeditgen_kernels, loaded from $EDITGEN_KERNELS_LIB; CUDA and float32
    only, and not run on a GPU yet)."""

    name = "triton"
    samples_on_device = True

    def __init__(self, loaded, device=None, dtype: str = "float32", cross_attention: str = "triton"):
        if dtype not in DTYPES:
            raise InvalidRequestError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if cross_attention not in CROSS_ATTENTION:
            raise InvalidRequestError(f"cross_attention {cross_attention!r} is not one of {', '.join(CROSS_ATTENTION)}")
        device = resolve_device(device)
        import torch

        from editgen.kernels import cross_attention as cross_kernel
        from editgen.kernels import step_attention
        from editgen.model.step_module import CrossKV, DecoderStep

        if device.type == "cpu" and type(cross_kernel._edited_cross_kernel).__name__ != "InterpretedFunction":
            raise InvalidRequestError("TRITON_INTERPRET=1 was set after the Triton kernels were loaded: set it "
                                      "before starting Python")
        self._torch = torch
        self.loaded = loaded
        self.shapes = loaded.shapes
        self.tokenizer = loaded.tokenizer
        self.device = device
        self.dtype = getattr(torch, dtype)
        cross = functools.partial(step_attention.TritonCrossAttention, dtype=self.dtype)
        if cross_attention == "cuda-lib":
            cross = functools.partial(step_attention.CudaLibCrossAttention, dtype=self.dtype,
                                      library=_cuda_library(device, dtype))
        # The loaded model stays where it is (other backends may share it): on CPU its
        # weights are used in place, on a GPU a copy is moved there.
        self.model = loaded.model if device.type == "cpu" else copy.deepcopy(loaded.model).to(device)
        # DecoderStep with the kernels as its attention parts: its embedding, layer tails
        # and LM head are the torch backend's ops. On CPU every weight matmul runs one row
        # at a time (row_invariant), so a row's numbers do not depend on the rows that
        # share its step; on CUDA one GEMM per matmul.
        self._dec = DecoderStep(self.model, row_invariant=device.type == "cpu",
                                self_attention=functools.partial(step_attention.TritonSelfAttention, dtype=self.dtype),
                                cross_attention=cross).eval()
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
        with torch.inference_mode():
            edit = self._edit_tensors(e)
            positions = t(batch.positions)
            cross_k, cross_v, text_mask = self._rows_cross(np.asarray(batch.slots, np.int64))
            want = np.flatnonzero(batch.want_maps)
            self_terms = d.self_attention.terms(t(batch.slots), positions, edit)
            cross_terms = d.cross_attention.terms(text_mask, edit, want_maps=bool(want.size))
            # DecoderStep's embedding, layer tails and LM head around the kernels; the
            # self-attention reads and writes the pool's layers in place.
            logits, _, _ = d.decode(t(batch.codes), positions, self._kv[:, 0], self._kv[:, 1], cross_k, cross_v,
                                    self_terms, cross_terms)
            probs = cross_terms.probs  # [layers, R, heads, T], or None
            if probs is None:
                maps = np.zeros((s.num_layers, 0, s.num_heads, s.max_text_tokens), np.float32)
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
