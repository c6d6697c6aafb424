"""`--quantize int8`: the decoder step with int8 weight matmuls for CPU, and its agreement with fp32.

Method (METHOD) "rowwise" (editgen.export.int8_rowwise): every MatMul with a constant
weight (attention projections, FFN, LM heads) runs on int8 weights (symmetric, 7 bits, one
scale per output column) and 8-bit activations quantized per row on the fly; graph inputs,
outputs, softmax, the edit and the KV cache stay fp32. It is batch-invariant (every op is
row-wise) and its cost barely grows with the rows. "matmul_nbits" (onnxruntime's
MatMulNBits, bits=8, blocks of BLOCK_SIZE, accuracy_level 4) is the previous method, kept
for comparison: also batch-invariant, but its 8-bit kernel is compute-bound on rows.
onnxruntime's own `quantize_dynamic` is not offered: its activation scale covers the whole
batch, so a row's codes would depend on the rows sharing its step. Measured comparison:
docs/benchmarks.md, "int8 methods".

Agreement (written to manifest["int8"]): greedy decoding with guidance 3.0 of one prompt
for AGREEMENT_STEPS steps, two ways:
- teacher-forced: both graphs see the fp32 greedy sequence; the fraction of (row,
  codebook, step) where int8's greedy choice equals fp32's, and the max abs logit error;
- free-running: each graph decodes on its own; the fraction of equal codes (one early
  difference changes everything after it, so this is a lower bound).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from editgen.engine.generate import generate_codes
from editgen.engine.manifest import GraphInfo
from editgen.engine.options import GenerationOptions
from editgen.engine.sampling import classifier_free_guidance

METHODS = ("rowwise", "matmul_nbits")
METHOD = "rowwise"
BLOCK_SIZE = 128
AGREEMENT_STEPS = 50
AGREEMENT_PROMPT = "lofi piano with warm drums"
INT8_FILE = "decoder_step.int8.onnx"


def quantize_step_graph(src: Path, dst: Path, method: str = METHOD, *, external_data: bool = False) -> None:
    """Write the int8 version of the graph at `src` to `dst` (its weight matmuls)."""
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per node
    if method == "matmul_nbits":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quant = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=4)
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=external_data)
    elif method == "rowwise":
        from editgen.export.int8_rowwise import rowwise_int8

        rowwise_int8(src, dst, external_data=external_data)
    else:
        raise ValueError(f"unknown int8 method {method!r}: one of {METHODS}")


def quantize_engine_int8(out: Path, step: GraphInfo, external_data_bytes: int, method: str = METHOD) -> dict:
    """Write the int8 step beside the decoder step `step` of `out` (INT8_FILE); returns the
    manifest's "int8" report (its agreement with fp32). `replace_with_int8` then makes it
    the engine's decoder_step."""
    fp32_bytes = sum((out / f).stat().st_size for f in (step.file, step.data_file) if f)
    external = fp32_bytes // 4 > external_data_bytes  # int8 weights are about 1/4 of fp32
    quantize_step_graph(out / step.file, out / INT8_FILE, method, external_data=external)
    return {"method": method, "bits": 8, "block_size": BLOCK_SIZE if method == "matmul_nbits" else None,
            **agreement(out, INT8_FILE)}


def replace_with_int8(out: Path, step: GraphInfo) -> GraphInfo:
    """The int8 graph becomes the engine's decoder_step (the fp32 one is not kept); returns
    its manifest entry."""
    for name in (step.file, step.data_file):
        if name:
            (out / name).unlink()
    os.replace(out / INT8_FILE, out / step.file)
    data_file = None
    if (out / (INT8_FILE + ".data")).exists():
        data_file = step.file + ".data"
        _rename_external_data(out / step.file, INT8_FILE + ".data", data_file)
    validation = {**step.validation,
                  "note": "errors of the fp32 graph before quantization; int8 vs fp32: manifest int8"}
    return dataclasses.replace(step, quantize="int8", data_file=data_file, validation=validation)


def _rename_external_data(model_path: Path, old: str, new: str) -> None:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        for item in tensor.external_data:
            if item.key == "location" and item.value == old:
                item.value = new
    os.replace(model_path.parent / old, model_path.parent / new)
    onnx.save_model(model, str(model_path))


class _Paired:
    """A backend that runs the int8 step (`test`) and, on the same batches, the fp32 step
    (`ref`), each on its own slot pool; records the max logit error and fp32's greedy
    choice, which `force` then writes over int8's (teacher forcing)."""

    def __init__(self, ref, test, guidance: float):
        self.ref, self.test, self.guidance = ref, test, guidance
        self.name, self.shapes, self.tokenizer = "paired", test.shapes, test.tokenizer
        self.max_error = 0.0
        self.agree = self.total = 0
        self._ref_choice = None

    def open(self, max_slots):
        self.ref.open(max_slots)
        self.test.open(max_slots)

    def encode_text(self, ids, mask):
        return self.test.encode_text(ids, mask)

    def admit(self, slots, hidden, mask, edit):
        self.ref.admit(slots, hidden, mask, edit)
        self.test.admit(slots, hidden, mask, edit)

    def release(self, slots):
        self.ref.release(slots)
        self.test.release(slots)

    def step(self, batch):
        ref_logits = self.ref.step(batch).logits.copy()  # the ref backend reuses its buffers
        self._ref_choice = classifier_free_guidance(ref_logits, self.guidance).argmax(-1)
        out = self.test.step(batch)
        self.max_error = max(self.max_error, float(np.abs(out.logits - ref_logits).max()))
        return out

    def force(self, frames: np.ndarray, codes: np.ndarray) -> None:
        self.agree += int((codes == self._ref_choice).sum())
        self.total += codes.size
        codes[...] = self._ref_choice


def agreement(engine_dir: Path, int8_file: str, steps: int = AGREEMENT_STEPS, guidance: float = 3.0) -> dict:
    """int8 vs fp32 step graphs of `engine_dir` (see the module docstring)."""
    from editgen.engine.backends.ort_backend import OrtBackend

    providers = ["CPUExecutionProvider"]
    with OrtBackend(engine_dir, providers=providers) as ref, \
            OrtBackend(engine_dir, providers=providers, step_file=int8_file) as test:
        return compare_backends(ref, test, steps, guidance)


def compare_backends(ref, test, steps: int = AGREEMENT_STEPS, guidance: float = 3.0) -> dict:
    """Agreement of backend `test` with `ref` (see the module docstring)."""
    shapes = ref.shapes
    frames = steps - shapes.channel_codebooks + 1
    options = GenerationOptions(seconds=frames / shapes.frame_rate, guidance_scale=guidance, greedy=True)
    prompt = ref.tokenizer.encode(AGREEMENT_PROMPT)
    paired = _Paired(ref, test, guidance)
    generate_codes(paired, [prompt], options, overrides=[paired.force])
    free_ref = generate_codes(ref, [prompt], options).codes
    free_test = generate_codes(test, [prompt], options).codes
    return {
        "steps": steps, "guidance_scale": guidance, "prompt": AGREEMENT_PROMPT,
        "teacher_forced_token_agreement": paired.agree / paired.total,
        "free_running_token_agreement": float(np.mean(free_ref == free_test)),
        "max_logit_error": paired.max_error,
    }
