"""Every exported graph checks itself: ONNX Runtime vs the torch module on example inputs,
max abs error per output (optimum's `validate_model_outputs` is the model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from editgen.errors import EditGenError

# Max abs error allowed per output, by compute dtype. fp16 is checked against the fp32
# torch module, relative to the output's scale (see `check`). fp32 graphs measured
# <= 1e-6 on the tiny presets; 1e-4 leaves room for 48-layer models, and no more: a gate
# far above the real errors would let a broken export through.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
CODE_MISMATCH = 0.01


class ExportValidationError(EditGenError):
    """An exported graph disagrees with the torch module beyond tolerance."""

    code = "export_validation"


def cpu_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_errors(session, module, examples, input_names, output_names) -> dict[str, dict]:
    """Per output, over all example input sets: `max_abs_error` and `max_abs_ref` (the
    reference's scale) for floats, `mismatch_fraction` for integer outputs (codes); a
    shape mismatch is an infinite error."""
    errors = {name: {} for name in output_names}
    for example in examples:
        with torch.inference_mode():
            ref = module(*example)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        feed = {name: t.numpy() for name, t in zip(input_names, example)}
        got = session.run(list(output_names), feed)
        for name, r, g in zip(output_names, ref, got):
            e = errors[name]
            r = r.float().numpy() if r.is_floating_point() else r.numpy()
            if np.issubdtype(r.dtype, np.integer):
                miss = float(np.mean(r != g)) if r.shape == g.shape else float("inf")
                e["mismatch_fraction"] = max(e.get("mismatch_fraction", 0.0), miss)
                continue
            err = float(np.abs(r - g.astype(np.float32)).max()) if r.shape == g.shape else float("inf")
            e["max_abs_error"] = max(e.get("max_abs_error", 0.0), err if np.isfinite(err) else float("inf"))
            e["max_abs_ref"] = max(e.get("max_abs_ref", 0.0), float(np.abs(r).max()))
    return errors


def check(graph: str, errors: dict[str, dict], tolerance: float) -> None:
    """Raise ExportValidationError when an output is over tolerance: float outputs allow
    `tolerance * max(1, max_abs_ref)` (absolute for values up to 1); codes may differ in
    at most CODE_MISMATCH of entries (vector-quantizer near-ties round either way)."""
    bad = []
    for name, e in errors.items():
        if "mismatch_fraction" in e:
            if not e["mismatch_fraction"] <= CODE_MISMATCH:
                bad.append(f"{name}: {e['mismatch_fraction']:.3g} of codes differ")
        elif not e["max_abs_error"] <= tolerance * max(1.0, e["max_abs_ref"]):
            bad.append(f"{name}: max abs error {e['max_abs_error']:.3g}")
    if bad:
        raise ExportValidationError(f"{graph}: ONNX Runtime disagrees with torch beyond tolerance {tolerance:g} "
                                    f"({'; '.join(bad)}): the export is wrong, please report it")
