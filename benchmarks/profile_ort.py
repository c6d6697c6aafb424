"""Where the ORT decoder step spends its time: onnxruntime's profiler on the edit step.

    python -m benchmarks.profile_ort /tmp/exports/small_fp32 --past 500 --batch 1

Runs the benchmark's request (`OurStepBench`: an edit of `batch` targets with CFG, stepped
by the engine core to `past`) on an OrtBackend whose decoder step is profiled, and prints the kernel time per op type, per kind (`KINDS`: weight matmuls, self-attention
over the cache, cross-attention, other; classified on the graph as ONNX Runtime optimized
it) and the slowest nodes. --threads sets the intra-op threads; --json writes the summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def profile(engine_dir: str, *, past: int, batch: int, steps: int, workload: str = "edit",
            threads: int = 0) -> dict:
    from benchmarks.engines import OurStepBench
    from editgen.engine.backends.ort_backend import OrtBackend

    with tempfile.TemporaryDirectory() as tmp:
        backend = OrtBackend(engine_dir, threads=threads or None, profile_dir=tmp)
        kinds = node_kinds(os.path.join(tmp, "decoder_step_optimized.onnx"))
        bench = OurStepBench(backend, workload, batch, past, 1, steps + 1)
        bench.burst(steps + 1)  # the first of these is the warm one
        events = json.loads(backend.end_profiling().read_text())
        backend.close()
    # Only the last `steps` runs count: the prefill steps and one warm step come first.
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                        key=lambda e: e["ts"])
    start = model_runs[-steps]["ts"]
    by_op, by_node, by_kind, runs = collections.Counter(), collections.Counter(), collections.Counter(), []
    for e in events:
        if e.get("ts", 0) < start:
            continue
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            by_op[e["args"].get("op_name", "?")] += e["dur"]
            by_node[node] += e["dur"]
            by_kind[kinds.get(node, "other")] += e["dur"]
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    kernel_us = sum(by_op.values())
    per_run_us = float(np.mean(runs)) if runs else 0.0
    return {
        "engine_dir": str(engine_dir), "threads": threads or "default", "past": past, "batch": batch, "rows": bench.rows, "runs": len(runs),
        "model_run_ms_mean": per_run_us / 1e3,
        "kernel_ms_per_run": kernel_us / max(1, len(runs)) / 1e3,
        "by_op_type": [{"op": op, "ms_per_run": us / max(1, len(runs)) / 1e3, "share": us / kernel_us}
                       for op, us in by_op.most_common()],
        "by_kind": [{"kind": k, "ms_per_run": us / max(1, len(runs)) / 1e3, "share": us / kernel_us}
                    for k, us in by_kind.most_common()],
        "top_nodes": [{"node": n, "ms_per_run": us / max(1, len(runs)) / 1e3, "share": us / kernel_us}
                      for n, us in by_node.most_common(15)],
    }


KINDS = {
    "weights": "MatMul/MatMulNBits/MatMulIntegerToFloat/Gemm on a constant weight (projections, FFN, lm heads), "
               "with the per-row activation quantization of the int8 graph",
    "self_attention_kv": "ops reading a past_key_i / past_value_i input (q K^T, P V over the cache)",
    "cross_attention_kv": "ops reading a cross_key_i / cross_value_i input",
    "other": "everything else (norms, softmax, the edit, embeddings, reshapes)",
}


def node_kinds(optimized_path: str) -> dict[str, str]:
    """Node name -> KINDS key, from the graph as ONNX Runtime optimized it."""
    import onnx

    model = onnx.load(optimized_path, load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if any(x.startswith(("past_key_", "past_value_")) for x in node.input):
            kinds[node.name] = "self_attention_kv"
        elif any(x.startswith(("cross_key_", "cross_value_")) for x in node.input):
            kinds[node.name] = "cross_attention_kv"
        elif node.op_type in ("MatMul", "MatMulNBits", "Gemm", "FusedMatMul", "MatMulInteger",
                              "DynamicQuantizeMatMul", "MatMulIntegerToFloat") and any(
                x in weights for x in node.input[1:]):
            kinds[node.name] = "weights"
        elif "/rowq/" in node.name:  # int8_rowwise's per-row activation quantization and row scale
            kinds[node.name] = "weights"
        else:
            kinds[node.name] = "other"
    return kinds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_ort", description=__doc__.split("\n")[0])
    p.add_argument("engine_dir")
    p.add_argument("--past", type=int, default=500)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    p.add_argument("--json", type=Path, help="write the summary here")
    a = p.parse_args(argv)
    s = profile(a.engine_dir, past=a.past, batch=a.batch, steps=a.steps, threads=a.threads)
    print(f"{a.engine_dir}: edit, {s['rows']} rows, past {a.past}: model_run {s['model_run_ms_mean']:.1f} ms, "
          f"kernels {s['kernel_ms_per_run']:.1f} ms per run")
    for row in s["by_op_type"][:12]:
        print(f"  {row['op']:<28} {row['ms_per_run']:8.2f} ms  {100 * row['share']:5.1f}%")
    print("by kind:")
    for row in s["by_kind"]:
        print(f"  {row['kind']:<28} {row['ms_per_run']:8.2f} ms  {100 * row['share']:5.1f}%")
    print("slowest nodes:")
    for row in s["top_nodes"][:8]:
        print(f"  {row['node'][:60]:<60} {row['ms_per_run']:8.2f} ms  {100 * row['share']:5.1f}%")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(s, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
