"""The segmented decoder step of an int8 export (editgen.model.step_segments), for the
int8-KV ORT engine (editgen.engine.backends.ort_segmented).

`--quantize int8` writes it beside the standard decoder_step.onnx (which stays: it is the
graph other runtimes such as TensorRT parse, and the engine's fallback where the kernel
cannot be built): step_segment_00.onnx .. step_segment_<layers>.onnx, each exported in
fp32, validated against its torch module, then given rowwise int8 weight matmuls like the
whole step. manifest["segments"] lists them with the agreement of the int8-KV engine
with the fp32 step (the same check as manifest["int8"]).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from editgen.engine.config import ModelShapes
from editgen.engine.contract import SEGMENT_EDIT_INPUTS, segment_io
from editgen.export.graphs import GraphDef, example_text_mask, identity_edit
from editgen.export.onnx_export import export_graph
from editgen.export.quantize import quantize_step_graph
from editgen.model.step_module import DecoderStep
from editgen.model.step_segments import StepSegment

KV_CACHE = "int8"


def segment_defs(model, shapes: ModelShapes) -> list[GraphDef]:
    s = shapes
    step = DecoderStep(model, fused=True).eval()
    L, H, D, T = s.num_layers, s.num_heads, s.head_dim, s.max_text_tokens
    gen = torch.Generator().manual_seed(0)

    def edit(rows, edited):
        mask = example_text_mask(rows, T)
        if not edited:
            return mask, identity_edit(rows, s, SEGMENT_EDIT_INPUTS)
        rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        src = torch.tensor([0, 0, 2, 2] if rows == 4 else [0] * rows)
        use_captured = torch.zeros(rows)
        use_captured[rows // 2 - 1] = 1.0
        return mask, (src, torch.softmax(torch.randn(rows, T, T, generator=gen) * 3, -1),
                      (rand(rows, T) > 0.5).float(), rand(rows, T) * 4 - 2, (rand(rows, T) > 0.5).float(),
                      rand(rows, L), use_captured, torch.softmax(torch.randn(L, rows, H, T, generator=gen), -1))

    def examples_for(index):
        def examples():
            out = []
            for rows, edited in ((4, True), (2, False)):
                if index == 0:
                    codes = torch.randint(0, s.vocab_size + 1, (rows, s.num_codebooks), generator=gen)
                    out.append((codes, torch.tensor([7, 3, 11, 0][:rows])))
                    continue
                mask, edits = edit(rows, edited)
                keep = mask[:, None, :, None].float()
                randn = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
                out.append((randn(rows, 1, s.hidden_size), randn(rows, 1, s.hidden_size),
                            randn(rows, H, T, D) * keep, randn(rows, H, T, D) * keep, mask, *edits))
            return out
        return examples

    defs = []
    for index in range(L + 1):
        inputs, outputs = segment_io(index, L)
        axes = {name: {1 if name == "edit_captured" else 0: "rows"} for name in inputs + outputs}
        defs.append(GraphDef(f"step_segment_{index:02d}", StepSegment(step, index).eval(), inputs, outputs, axes,
                             examples_for(index), dtype_follows_export=False))
    assert set(SEGMENT_EDIT_INPUTS) <= set(segment_io(1, L)[0])
    return defs


def export_segments(model, shapes: ModelShapes, out: Path, log: Callable[[str], None] = print) -> dict:
    """Export, validate and quantize every segment into `out`; returns manifest["segments"]
    (without the agreement, which needs the fp32 step: the caller adds it)."""
    start = time.perf_counter()
    entries = []
    for gd in segment_defs(model, shapes):
        entry = export_graph(gd, out, "fp32")
        int8 = out / f".{gd.file}.int8"
        quantize_step_graph(out / gd.file, int8)
        os.replace(int8, out / gd.file)
        entry.update(name=gd.name, quantize="int8")
        entry["validation"]["note"] = "errors of the fp32 graph before quantization"
        entries.append(entry)
    worst = max(e["max_abs_error"] for entry in entries for e in entry["validation"]["errors"].values())
    log(f"  step segments   int8  {len(entries)} graphs, int8 KV cache, fp32 max abs error {worst:.3g} "
        f"({time.perf_counter() - start:.1f} s)")
    return {"kv_cache": KV_CACHE, "graphs": entries}


def segments_agreement(out: Path) -> dict:
    """The int8-KV engine (segments + kernel) against the fp32 standard step of `out`; where
    the kernel cannot be built here, {"skipped": why} (the export is still usable: the
    engine runs its standard int8 step where the kernel is missing)."""
    from editgen.engine.backends.ort_backend import OrtBackend
    from editgen.engine.backends.ort_segmented import SegmentedOrtBackend
    from editgen.export.quantize import compare_backends
    from editgen.kernels.cpu_library import build_error

    why = build_error()
    if why is not None:
        return {"skipped": why}
    with OrtBackend(out, providers=["CPUExecutionProvider"]) as ref, SegmentedOrtBackend(out) as test:
        return compare_backends(ref, test)
