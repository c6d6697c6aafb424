"""The weights of the CPU int8 step (editgen/kernels/cpu/int8_step.cc), for `--quantize int8`.

`int8_step.npz` holds the fused DecoderStep's weights (q pre-scaled, q/k/v as one matrix,
as the exported step): embeddings and layer norms in fp32, and every weight matmul as
int8 W [K, N] with one scale per output column, quantized by int8_rowwise.quantize_weight,
so they are the same integers as the rowwise int8 ONNX step's (names:
editgen.kernels.cpu_step.weight_names). The standard decoder_step.onnx stays the exported
artifact and the reference; this is a second way to run it.

manifest["int8_step"] records the file, the instruction set the library uses here, the
int8 step's agreement with the fp32 step (the same check as manifest["int8"]), and the
step times of the CPU paths measured at export, with the one the engine runs by default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from editgen.engine.config import ModelShapes
from editgen.export.int8_rowwise import METHOD_NOTE, quantize_weight
from editgen.kernels.cpu_step import MATRICES, weight_names
from editgen.model.step_module import DecoderStep

FILE = "int8_step.npz"
TIMED_ROWS, TIMED_POSITION, TIMED_STEPS = 4, 250, 10  # the export's step-time check (an edit's 4 rows)


def int8_step_weights(model, shapes: ModelShapes) -> dict[str, np.ndarray]:
    """The arrays of int8_step.npz from a transformers MusicGen."""
    step = DecoderStep(model, fused=True).eval()

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().contiguous().numpy()

    arrays = {"embed": f32(step.embed), "positions": f32(step.positions)}

    def matrix(name: str, weight: torch.Tensor) -> None:  # weight [out, in], as nn.Linear's
        arrays[f"{name}.w"], arrays[f"{name}.scale"] = quantize_weight(f32(weight).T)

    eps = set()
    for i, layer in enumerate(step.layers):
        for norm, module in (("ln_self", layer.self_attn_layer_norm), ("ln_cross", layer.encoder_attn_layer_norm),
                             ("ln_ffn", layer.final_layer_norm)):
            arrays[f"layers.{i}.{norm}.g"], arrays[f"layers.{i}.{norm}.b"] = f32(module.weight), f32(module.bias)
            eps.add(module.eps)
        linears = {"out": layer.self_attn.out_proj, "cross_out": layer.encoder_attn.out_proj,
                   "fc1": layer.fc1, "fc2": layer.fc2}
        if any(m.bias is not None for m in linears.values()) or layer.activation_fn.__class__.__name__ != "GELUActivation":
            raise ValueError("the int8 step takes MusicGen's decoder layer: projections without bias, exact GELU")
        weights = {"qkv": step.qkv[i], "cross_q": step.cross_q[i], **{k: m.weight for k, m in linears.items()}}
        for name in MATRICES:
            matrix(f"layers.{i}.{name}", weights[name])
    arrays["final_norm.g"], arrays["final_norm.b"] = f32(step.final_norm.weight), f32(step.final_norm.bias)
    eps.add(step.final_norm.eps)
    if len(eps) != 1:
        raise ValueError(f"the int8 step takes one layer-norm eps, this model has {sorted(eps)}")
    arrays["ln_eps"] = np.array(eps.pop(), np.float32)
    matrix("lm_head", step.lm_head)
    assert sorted(arrays) == sorted(weight_names(len(step.layers)))
    return arrays


def export_int8_step(model, shapes: ModelShapes, out: Path, log: Callable[[str], None] = print) -> dict:
    """Write out/int8_step.npz; returns manifest["int8_step"] without its measurements
    (`measure_paths` adds them: they need the rest of the export)."""
    start = time.perf_counter()
    arrays = int8_step_weights(model, shapes)
    np.savez(out / FILE, **arrays)
    int8 = sum(a.nbytes for a in arrays.values() if a.dtype == np.int8)
    log(f"  int8 step       int8  {FILE}: {int8 / 1e6:.0f} MB of int8 weights ({time.perf_counter() - start:.1f} s)")
    return {"file": FILE, "weights": METHOD_NOTE}


def measure_paths(out: Path, log: Callable[[str], None] = print) -> dict:
    """The int8 step against the fp32 step (agreement), and the step time of each CPU path
    of the int8 export on this machine: the int8 step and the standard int8 ONNX step.
    Where the library cannot be built here: {"skipped": why}, and the engine runs the
    standard step."""
    from editgen.engine.backends.int8_step_backend import Int8StepBackend
    from editgen.engine.backends.ort_backend import OrtBackend
    from editgen.export.quantize import INT8_FILE, compare_backends
    from editgen.kernels.cpu_library import build_error, isa

    why = build_error()
    if why is not None:
        log(f"  int8 step       not measured: {why}")
        return {"skipped": why}
    start = time.perf_counter()
    with OrtBackend(out, providers=["CPUExecutionProvider"]) as ref, Int8StepBackend(out) as test:
        agreement = compare_backends(ref, test)
    with Int8StepBackend(out) as native, OrtBackend(out, providers=["CPUExecutionProvider"],
                                                    step_file=INT8_FILE) as standard:
        step_ms = {"int8-step": step_time(native), "ort-int8": step_time(standard)}
    entry = {"isa": isa(), "agreement": agreement, "step_ms": step_ms, "default": min(step_ms, key=step_ms.get),
             "timed": {"rows": TIMED_ROWS, "position": TIMED_POSITION, "steps": TIMED_STEPS}}
    log(f"  int8 step       agreement with fp32: teacher-forced {agreement['teacher_forced_token_agreement']:.4f}, "
        f"free-running {agreement['free_running_token_agreement']:.4f}, max logit error "
        f"{agreement['max_logit_error']:.3g}; {cpu_path_line(entry)} ({time.perf_counter() - start:.1f} s)")
    return entry


def cpu_path_line(entry: dict) -> str:
    """Which CPU path the engine runs, and why (manifest["int8_step"])."""
    if "skipped" in entry:
        return f"CPU path: int8-step where the CPU kernels build (not measured at export: {entry['skipped']})"
    times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(entry["step_ms"].items(), key=lambda kv: kv[1]))
    t = entry["timed"]
    return (f"CPU path: {entry['default']} ({entry['isa']}); step at {t['rows']} rows, position {t['position']}: "
            f"{times}")


def step_time(backend) -> float:
    """Median ms of TIMED_STEPS backend steps of TIMED_ROWS rows at TIMED_POSITION (an edit
    mid-way through a 10 s clip), the cache filled by earlier steps of the same rows."""
    from editgen.engine.contract import StepBatch
    from editgen.engine.edit.step_inputs import EditStepInputs, StepEdits

    s = backend.shapes
    rows, T, L, H = TIMED_ROWS, s.max_text_tokens, s.num_layers, s.num_heads
    backend.open(rows)
    slots = np.arange(rows)
    mask = np.zeros((rows, T), np.int64)
    mask[: rows // 2, :8] = 1  # conditional rows with 8 text tokens, null rows without
    backend.admit(slots, backend.encode_text(np.zeros((rows, T), np.int64), mask), mask,
                  EditStepInputs.identity(rows, T, L, H))
    edit = StepEdits.identity(rows, T, L, H)
    codes = np.zeros((rows, s.num_codebooks), np.int64)
    times = []
    for position in range(TIMED_POSITION + TIMED_STEPS):
        batch = StepBatch(slots, np.full(rows, position, np.int64), codes, edit, np.zeros(rows, bool))
        start = time.perf_counter()
        backend.step(batch)
        if position >= TIMED_POSITION:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)
