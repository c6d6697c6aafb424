"""Candidates for the CPU step of random:small, timed back to back in one process: one
decoder step of an edit's rows at position 250 (the middle of a 10 s edit).

    python -m benchmarks.cpu_candidates --int8 /tmp/exports/small_int8 --fp32 /tmp/exports/small_fp32 \\
        --rows 4 32 --json candidates.json

- `int8-step`: the C++ int8 step (Int8StepBackend), int8 K/V cache;
- `ort-int8`: the standard int8 ONNX step (rowwise int8 matmuls, one onnxruntime session,
  every fusion of ORT_ENABLE_ALL: the fewest, largest segments), fp32 K/V cache;
- `openvino-int8-onnx`: OpenVINO's CPU runtime reading that same int8 ONNX graph;
- `openvino-fp32`, `openvino-int8-weights` (with --fp32): OpenVINO on the fp32 ONNX step,
  as it is and with its own int8 weight compression (nncf.compress_weights, INT8_ASYM),
  OpenVINO's LLM decode setting.
The OpenVINO and standard-step timings feed the graph directly (random K/V of 256
positions, identity edit); the int8 step runs through its backend (benchmarks/step_parts'
OurStepBench). Each is the minimum of --repeats steps after a warm one; loadavg is recorded
before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg, repeat_timing

PROG = "python -m benchmarks.cpu_candidates"
PAST = 250


def _feed(manifest, graph: str, rows: int) -> dict:
    from editgen.engine.edit.step_inputs import EditStepInputs

    s = manifest.shapes
    edit = EditStepInputs.identity(rows, s.max_text_tokens, s.num_layers, s.num_heads).as_feed()
    rng = np.random.default_rng(0)
    feed = {}
    for t in manifest.graphs[graph].inputs:
        shape = t.resolve({"rows": rows, "positions": PAST + 6})
        if t.name in edit:
            feed[t.name] = edit[t.name]
        elif t.name == "codes":
            feed[t.name] = np.zeros(shape, np.int64)
        elif t.name == "positions":
            feed[t.name] = np.full(shape, PAST, np.int64)
        elif t.name == "text_mask":
            feed[t.name] = (np.arange(shape[1]) < 8)[None].repeat(shape[0], 0).astype(np.int64)
        else:
            feed[t.name] = (rng.standard_normal(shape) * 0.1).astype(t.np_dtype)
    return feed


def int8_step(engine: str, rows: int, threads: int, repeats: int) -> float:
    from benchmarks.engines import OurStepBench
    from editgen.engine.backends.int8_step_backend import Int8StepBackend

    with Int8StepBackend(engine, threads=threads) as backend:
        bench = OurStepBench(backend, "edit", rows // 2 - 1, PAST, 1, repeats + 2)
        return repeat_timing(lambda: bench.burst(1), warmup=1, repeats=repeats)["min"]


def ort_int8(engine: str, rows: int, threads: int, repeats: int) -> float:
    import onnxruntime as ort

    from editgen.engine.manifest import load_manifest

    m = load_manifest(engine)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(m.graph_path("decoder_step")), options, providers=["CPUExecutionProvider"])
    feed = _feed(m, "decoder_step", rows)
    return repeat_timing(lambda: session.run(None, feed), warmup=1, repeats=repeats)["min"]


def openvino(path: Path, manifest_dir: str, rows: int, threads: int, repeats: int, compress: bool = False) -> float:
    import openvino as ov

    from editgen.engine.manifest import load_manifest

    core = ov.Core()
    model = core.read_model(str(path))
    if compress:
        import nncf

        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    feed = _feed(load_manifest(manifest_dir), "decoder_step", rows)
    return repeat_timing(lambda: request.infer(feed), warmup=1, repeats=repeats)["min"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--int8", required=True, help="an int8 export of random:small")
    p.add_argument("--fp32", help="an fp32 export of random:small (the OpenVINO fp32 candidates)")
    p.add_argument("--rows", type=int, nargs="+", default=[4, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    from editgen.engine.manifest import load_manifest

    int8_graph = load_manifest(a.int8).graph_path("decoder_step")
    candidates = {"int8-step": lambda r: int8_step(a.int8, r, a.threads, a.repeats),
                  "ort-int8": lambda r: ort_int8(a.int8, r, a.threads, a.repeats),
                  "openvino-int8-onnx": lambda r: openvino(int8_graph, a.int8, r, a.threads, a.repeats)}
    if a.fp32:
        fp32_graph = load_manifest(a.fp32).graph_path("decoder_step")
        candidates["openvino-fp32"] = lambda r: openvino(fp32_graph, a.fp32, r, a.threads, a.repeats)
        candidates["openvino-int8-weights"] = lambda r: openvino(fp32_graph, a.fp32, r, a.threads, a.repeats, True)
    results = []
    for rows in a.rows:
        for name, run in candidates.items():
            before = loadavg()
            try:
                ms = 1e3 * run(rows)
            except Exception as exc:  # recorded: a candidate that cannot run this graph
                ms, error = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            else:
                error = None
            results.append({"candidate": name, "rows": rows, "step_ms": ms, "error": error, "loadavg_before": before,
                            "loadavg_after": loadavg()})
            print(f"{name:<22} {rows:>3} rows: " + (f"{ms:8.1f} ms" if ms is not None else error), file=sys.stderr)
            if a.json:
                a.json.parent.mkdir(parents=True, exist_ok=True)
                a.json.write_text(json.dumps({"position": PAST, "threads": a.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
